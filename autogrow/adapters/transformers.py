"""Hugging Face transformers models: trace them without a KV cache, keep per-head sizes fixed,
and keep ``model.config`` and the modules' size attributes in step with the grown tensors, so
that ``type(model)(model.config)`` builds exactly the grown shapes and ``save_pretrained`` /
``from_pretrained`` round-trip.

How the new config is found, without a table per architecture: the config's fields are
probed on meta builds and become exact relations on the width groups
(:mod:`~autogrow.adapters.hf_config`, through the ``size_relations`` hook); widen plans under
them, so the plan is one the config can state, and the fields are then solved from the planned
widths and checked by building the new config on meta (every parameter shape must equal the
grown one, otherwise :class:`~autogrow.ConstraintError`).

Nothing here imports transformers: a model is recognised by its config's class hierarchy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn

from ..axes.relations import SizeRelations
from ..axes.terms import Term
from ..errors import ConstraintError
from .base import ApplyToModel, ModelAdapter, Undo
from .hf_config import (
    HEAD_COUNTS,
    KV_HEAD_COUNTS,
    build_on_meta,
    configured,
    field_roots,
    probe,
    relations_for,
    set_field,
)
from .hf_config import quiet as _quiet
from .hf_config import shapes as _shapes
from .hf_floats import grown_float_fields, unset_float_attrs
from .hf_stacks import attributes_as_built, layer_stacks, sync_layer_count, sync_layer_sources

if TYPE_CHECKING:
    from ..rules.context import Analysis

HEAD_SIZES = ("head_dim", "d_kv", "kv_channels", "attention_head_size", "head_size")
_MISSING = object()


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (judged without importing it)."""
    config = getattr(model, "config", None)
    names = {c.__name__ for c in type(config).__mro__}
    return bool(names & {"PreTrainedConfig", "PretrainedConfig"}) and hasattr(model, "tie_weights")


@contextmanager
def inference_settings(model: nn.Module) -> Iterator[None]:
    """Run without a KV cache (a ``DynamicCache`` output cannot be traced or compared)."""
    config = getattr(model, "config", None) if is_hf_model(model) else None
    old = getattr(config, "use_cache", _MISSING)
    if config is not None and old is not _MISSING:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None and old is not _MISSING:
            config.use_cache = old


def constrain(analysis: Any, model: nn.Module) -> None:
    """What a transformers config can describe, stated on the width graph's axes.

    * One head size for queries, keys and values: value head sizes stay.
    * Where the config derives the head size from the hidden size (BERT, GPT-2, ViT: doubling
      the head count alone changes no parameter shape), heads and hidden size must grow by the
      same integer factor (a ratio tie), so ×1.5 keeps both and widens the FFN.
    """
    store = analysis.store
    for axes in analysis.attention:
        store.freeze(
            axes.v_dim,
            f"per-head value size at attention in module '{axes.module}' "
            "(a transformers config describes one head_dim)",
        )
    if not analysis.attention or not (_head_size_derived(model) or _heads_divide_fields(model)):
        return
    hidden = _residual_atom(analysis)
    if hidden is None:
        return
    for axes in analysis.attention:
        for atom in store.leaf_atoms(axes.heads):
            store.ratio_ties.add_edge(
                atom.id, hidden.id, why=f"{type(model.config).__name__} head size = hidden / heads"
            )


def _head_size_derived(model: nn.Module) -> bool:
    config = model.config
    fields = [k for k in HEAD_COUNTS if type(getattr(config, k, None)) is int]
    if not fields or any(type(getattr(config, k, None)) is int for k in HEAD_SIZES):
        return False
    probe = copy.deepcopy(config)
    setattr(probe, fields[0], getattr(config, fields[0]) * 2)
    try:
        return _shapes(_build_on_meta(model, probe)) == _shapes(_build_on_meta(model, config))
    except Exception:  # noqa: BLE001 - the doubled count does not divide the hidden size
        return False


def _heads_divide_fields(model: nn.Module) -> bool:
    """Whether the config class rejects a head count that divides none of its sizes (its
    validation asks hidden size % heads == 0, even where head_dim is a field of its own):
    then heads can only grow with the hidden size, as where the head size is derived."""
    config = model.config
    fields = [k for k in HEAD_COUNTS if type(getattr(config, k, None)) is int]
    if not fields:
        return False
    heads = getattr(config, fields[0])
    sizes = [v for v in _int_fields(config).values() if v > heads]
    odd = next(
        p
        for p in range(heads + 1, 10 * heads + 100)
        if all(p % q for q in range(2, p)) and all(v % p for v in sizes)
    )
    data = config.to_dict()
    data[fields[0]] = odd
    for k in KV_HEAD_COUNTS:  # grouped-query heads must divide the head count: keep them valid
        if type(data.get(k)) is int:
            data[k] = 1
    try:
        with _quiet():
            type(config).from_dict(data)
    except Exception:  # noqa: BLE001 - any validation error means: not on its own
        return True
    return False


def _residual_atom(analysis: Any) -> Any:
    """The residual stream: the normalised (uniform) atom that the most parameter axes use."""
    store = analysis.store
    counts: dict[int, int] = {}
    for info in analysis.params.values():
        for term in info.terms:
            for atom in store.leaf_atoms(term):
                if store.info(atom).uniform and store.info(atom).frozen is None:
                    counts[atom.id] = counts.get(atom.id, 0) + 1
    if not counts:
        return None
    return store.atom(max(counts, key=counts.__getitem__))


def _build_on_meta(model: nn.Module, config: Any) -> nn.Module:
    return build_on_meta(type(model), config)


def _int_fields(config: Any) -> dict[str, int]:
    return {
        k: v
        for k, v in vars(config).items()
        if type(v) is int and v >= 1 and not k.startswith("_") and not k.endswith("_token_id")
    }


def grown_config(
    model: nn.Module,
    analysis: Any,
    new_size: Callable[[Term], int],
    new_shapes: dict[str, tuple[int, ...]],
) -> dict[str, int | float]:
    """The config fields (name → new value; ``field[i]`` for an entry of a list field) that
    describe ``model`` widened to ``new_shapes``: solved from the relations that widen planned
    under (:func:`~autogrow.adapters.hf_config.relations_for`), then checked by building the
    new config on meta. Raises ConstraintError when no config describes the grown shapes."""
    config = model.config
    base, _ = probe(model)
    old = _shapes(model)
    if any(base.get(k) != s for k, s in old.items() if k in base):
        different = [k for k, s in old.items() if k in base and base[k] != s][:3]
        raise ConstraintError(
            f"{type(model).__name__}'s config does not describe the model as it is "
            f"(e.g. {', '.join(different)}), so it cannot describe the grown one. Widen a model "
            "whose shapes match type(model)(model.config), or update the config first."
        )
    relations = relations_for(model, analysis)
    widths = {gid: new_size(analysis.store.atom(gid)) for gid in relations.widths_of}
    values = relations.solve(widths, {})
    changes = {n: v for n, v in values.items() if v != relations.values[n]}
    try:
        built = _shapes(_build_on_meta(model, configured(config, changes)))
    except Exception as e:  # noqa: BLE001 - the config class rejects the combination
        why = f"{type(config).__name__} rejects {changes}: {type(e).__name__}: {_first_line(e)}"
    else:
        wrong = [k for k, s in new_shapes.items() if k in built and built[k] != s]
        if not wrong:
            return changes
        shown = ", ".join(f"{k} {tuple(new_shapes[k])} vs {built[k]}" for k in wrong[:3])
        why = f"with {changes or 'no changes'} the config builds different shapes ({shown})"
    raise ConstraintError(
        f"no {type(config).__name__} describes the widened {type(model).__name__}: {why}. "
        "Widen by a factor the config's fields can follow, or with a dict of widths for the "
        "groups those fields size (see autogrow.analyze(model) for the groups)."
    )


def apply_config(model: nn.Module, changes: Mapping[str, Any]) -> Callable[[], None]:
    """Set the new config fields on ``model.config`` and copy every size attribute the modules
    compute from the config (num_heads, head_dim, num_key_value_groups, ...) from a reference
    built on meta. Returns an undo function."""
    config = model.config
    old_fields = {k: getattr(config, k) for n in changes for k in field_roots(n)}
    for k, v in changes.items():
        set_field(config, k, v)
    undo = adopt_sizes(model, _build_on_meta(model, config))

    def restore() -> None:
        for k, v in old_fields.items():
            setattr(config, k, v)
        for module, attr, value in undo:
            setattr(module, attr, value)

    return restore


def adopt_sizes(
    model: nn.Module, reference: nn.Module, names: Sequence[str] | None = None
) -> list[tuple[nn.Module, str, Any]]:
    """Copy onto ``model``'s modules (those at ``names`` and below, or all) every size
    attribute whose value differs in the same-typed module of ``reference`` (a build of the new
    config on meta); returns (module, attribute, old value) for each one set."""
    prefixes = tuple(f"{n}." for n in names or ())
    refs = dict(reference.named_modules())
    undo: list[tuple[nn.Module, str, Any]] = []
    for name, module in model.named_modules():
        if names is not None and name not in names and not name.startswith(prefixes):
            continue
        ref = refs.get(name)
        if ref is None or type(ref) is not type(module):
            continue
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training" or not _is_size(value):
                continue
            new = vars(ref).get(attr, _MISSING)
            if new is not _MISSING and type(new) is type(value) and new != value:
                undo.append((module, attr, value))
                setattr(module, attr, new)
    return undo


def _is_size(value: Any) -> bool:
    if type(value) in (int, float):
        return True
    return type(value) is tuple and all(type(v) is int for v in value)


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


class TransformersAdapter(ModelAdapter):
    """Hugging Face transformers models (``PreTrainedModel``), recognised without importing
    transformers: their config must describe the grown model (``type(model)(model.config)``
    builds its shapes, ``save_pretrained``/``from_pretrained`` round-trip), tracing runs without
    a KV cache, and ``Conv1D`` (GPT-2's transposed Linear) counts as a linear layer."""

    name = "transformers"

    def matches(self, model: nn.Module) -> bool:
        return is_hf_model(model)

    @contextmanager
    def inference_context(self, model: nn.Module) -> Iterator[None]:
        with inference_settings(model):
            yield

    def constrain(self, analysis: Analysis, model: nn.Module) -> None:
        constrain(analysis, model)

    def prepare_widen(
        self,
        model: nn.Module,
        analysis: Analysis,
        new_size: Callable[[Term], int],
        new_shapes: dict[str, tuple[int, ...]],
    ) -> ApplyToModel | None:
        # A config states one head count: every attention call must grow its heads alike.
        ratios = {new_size(a.heads) / a.heads.size for a in analysis.attention}
        if len(ratios) > 1:
            raise ConstraintError(
                f"attention layers of {type(model).__name__} would get different head counts "
                f"(x{sorted(ratios)}), which its config cannot describe; widen every layer by "
                "the same factor (a float factor does)"
            )
        changes = grown_config(model, analysis, new_size, new_shapes)
        # Norms whose eps widening rescaled (filled units): the config field takes the new eps.
        return lambda result: apply_config(result, {**changes, **grown_float_fields(result)})

    def size_relations(self, model: nn.Module, analysis: Analysis) -> SizeRelations | None:
        return relations_for(model, analysis)

    def unsettable_floats(
        self,
        model: nn.Module,
        attrs: list[tuple[str, str]],
        others: set[tuple[str, str]],
    ) -> str | None:
        return unset_float_attrs(model, attrs, others)

    def check_grown(self, model: nn.Module, what: str) -> None:
        # save_pretrained/from_pretrained rebuild the model from its config: the grown model
        # must be exactly what its config builds, or it would reload different (or not at all).
        try:
            # from_pretrained reads config.json back through the config class, which validates
            # the fields together (e.g. hidden size a multiple of the head count).
            with _quiet():
                reloaded = type(model.config).from_dict(model.config.to_dict())
            built = _shapes(_build_on_meta(model, reloaded))
        except Exception as e:  # noqa: BLE001 - the config class rejects its own fields
            raise ConstraintError(
                f"the {what} {type(model).__name__}'s config would not load back "
                f"({type(e).__name__}: {_first_line(e)}), so from_pretrained could not reload "
                "it. Use a factor the config can describe (autogrow.analyze(model) shows the "
                "groups), e.g. 2.0"
            ) from None
        have = _shapes(model)
        extra = sorted(have.keys() - built.keys())
        missing = sorted(built.keys() - have.keys())
        wrong = sorted(k for k in have.keys() & built.keys() if have[k] != built[k])
        if not (extra or missing or wrong):
            return
        parts = [
            f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("new", extra), ("missing", missing), ("reshaped", wrong))
            if names
        ]
        raise ConstraintError(
            f"{type(model.config).__name__} cannot describe the {what} {type(model).__name__} "
            f"(tensors {'; '.join(parts)}), so save_pretrained/from_pretrained would not "
            "reload it. Grow only what the config describes: for depth, the layer stacks "
            f"({', '.join(layer_stacks(model)) or 'none found'}); for width, a factor the "
            "config's fields can express."
        )

    def layer_stacks(self, model: nn.Module) -> dict[str, str]:
        return layer_stacks(model)

    def after_deepen(
        self,
        model: nn.Module,
        stacks: dict[str, str],
        inserted: list[tuple[str, int | None, int]],
    ) -> Undo:
        return sync_layer_count(model, stacks, inserted)

    def after_stack(
        self, model: nn.Module, stacks: dict[str, str], sources: dict[str, list[int]]
    ) -> Undo:
        undo_counts = sync_layer_sources(model, stacks, sources)
        moved = [
            f"{container}.{key}"
            for container, source in sources.items()
            for i, key in enumerate(model.get_submodule(container)._modules)
            if i >= len(source) or source[i] != i
        ]
        undo_attrs = attributes_as_built(model, moved)

        def restore() -> None:
            undo_attrs()
            undo_counts()

        return restore

    def linear_width(self, module: nn.Module) -> int | None:
        # transformers' Conv1D: y = x @ weight + bias with weight stored (in, out); nf = out.
        if type(module).__name__ == "Conv1D" and type(getattr(module, "nf", None)) is int:
            return module.nf
        return None

    def branch_end_params(self, module: nn.Module) -> tuple[str, ...] | None:
        # Experts stored as stacked 3-D parameters (``use_experts_implementation``): every
        # expert's output is its slice of ``down_proj`` (plus ``down_proj_bias``), applied
        # last, so zeroing those zeroes the experts' output whichever experts are routed to.
        down = getattr(module, "down_proj", None)
        if not isinstance(down, nn.Parameter) or down.ndim != 3:
            return None
        if not isinstance(getattr(module, "is_transposed", None), bool):
            return None
        if getattr(module, "has_post_expert_norm", False):
            return None  # a norm after the projection: zero in, its bias out
        bias = getattr(module, "down_proj_bias", None)
        return ("down_proj", "down_proj_bias") if isinstance(bias, nn.Parameter) else ("down_proj",)
