"""Hugging Face transformers models: trace them without a KV cache, keep per-head sizes fixed,
and keep ``model.config`` and the modules' size attributes in step with the grown tensors, so
that ``type(model)(model.config)`` builds exactly the grown shapes and ``save_pretrained`` /
``from_pretrained`` round-trip.

How the new config is found, without a table per architecture:

1. **Probe**: each integer config field is doubled in turn and the model is built on the meta
   device (no memory, milliseconds); the parameters whose shapes change give that field's
   exponents (``log2`` of the size ratio per parameter axis).
2. **Attention counts**: shapes cannot tell heads from head size (BERT's projections are
   ``hidden × hidden`` whatever the head count), so head-count fields take the ratio of the query
   heads that the width graph saw at ``scaled_dot_product_attention``; head-size fields stay
   (autogrow never changes a head's size in these models: one config number describes q, k, v).
3. **Solve** the remaining fields by least squares on the exponents, round, and **check** by
   building the model from the new config on meta: every parameter shape must equal the grown
   one, otherwise :class:`~autogrow.ConstraintError`.

Nothing here imports transformers: a model is recognised by its config's class hierarchy.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..axes.terms import Term
from ..errors import ConstraintError
from .base import ApplyToModel, ModelAdapter, Undo

if TYPE_CHECKING:
    from ..rules.context import Analysis

HEAD_COUNTS = (
    "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads",
    "decoder_attention_heads",
)  # fmt: skip
KV_HEAD_COUNTS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num")
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


@contextmanager
def _quiet() -> Iterator[None]:
    """Keep transformers' own log lines and warnings about probe configs from the user."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


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


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return {k: tuple(v.shape) for k, v in named.items()}


def _build_on_meta(model: nn.Module, config: Any) -> nn.Module:
    with torch.device("meta"):
        return type(model)(config)


def _int_fields(config: Any) -> dict[str, int]:
    return {
        k: v
        for k, v in vars(config).items()
        if type(v) is int and v >= 1 and not k.startswith("_") and not k.endswith("_token_id")
    }


def grown_config(
    model: nn.Module, new_shapes: dict[str, tuple[int, ...]], head_ratio: float | None
) -> dict[str, int]:
    """The config fields (name → new value) that describe a model with ``new_shapes``.

    ``head_ratio``: how many times more query heads the grown model has (None: no attention
    call was seen). Raises ConstraintError when no config describes the grown shapes.
    """
    config = model.config
    base = _shapes(_build_on_meta(model, config))
    old = _shapes(model)
    if any(base.get(k) != s for k, s in old.items() if k in base):
        different = [k for k, s in old.items() if k in base and base[k] != s][:3]
        raise ConstraintError(
            f"{type(model).__name__}'s config does not describe the model as it is "
            f"(e.g. {', '.join(different)}), so it cannot describe the grown one. Widen a model "
            "whose shapes match type(model)(model.config), or update the config first."
        )
    axes = [(k, d) for k, s in base.items() if k in new_shapes for d in range(len(s))]
    fields = _int_fields(config)
    exponents: dict[str, list[float]] = {}
    for name, value in fields.items():
        probe = copy.deepcopy(config)
        setattr(probe, name, value * 2)
        try:
            shapes = _shapes(_build_on_meta(model, probe))
        except Exception:  # noqa: BLE001 - an invalid combination: this field is not a width
            continue
        if shapes.keys() != base.keys():
            continue  # a structural field (number of layers): not ours to change
        column = [math.log2(shapes[k][d] / base[k][d]) for k, d in axes]
        if any(column):
            exponents[name] = column

    changes: dict[str, int] = {}
    fixed: dict[str, float] = {}
    for name in exponents.keys() | fields.keys():
        if name in HEAD_SIZES:
            fixed[name] = 0.0
        elif head_ratio is not None and name in HEAD_COUNTS + KV_HEAD_COUNTS:
            fixed[name] = math.log2(head_ratio)
    target = torch.tensor(
        [math.log2(new_shapes[k][d] / base[k][d]) for k, d in axes], dtype=torch.float64
    )
    for name, x in fixed.items():
        if name in exponents:
            target -= x * torch.tensor(exponents[name], dtype=torch.float64)
    free = [n for n in exponents if n not in fixed]
    solved: dict[str, float] = dict(fixed)
    if free:
        matrix = torch.tensor([exponents[n] for n in free], dtype=torch.float64).T
        solution = torch.linalg.lstsq(matrix, target.unsqueeze(1), driver="gelsd").solution
        solved.update({n: float(x) for n, x in zip(free, solution.squeeze(1))})
    for name, x in solved.items():
        value = round(fields[name] * 2**x) if name in fields else None
        if value is not None and value != fields[name]:
            changes[name] = value

    check = copy.deepcopy(config)
    for name, value in changes.items():
        setattr(check, name, value)
    try:
        built = _shapes(_build_on_meta(model, check))
    except Exception as e:  # noqa: BLE001 - the config class rejects the combination
        why = f"{type(config).__name__} rejects {changes}: {type(e).__name__}: {e}"
        involved = sorted(changes)
    else:
        wrong = [k for k, s in new_shapes.items() if k in built and built[k] != s]
        if not wrong:
            return changes
        shown = ", ".join(f"{k} {tuple(new_shapes[k])} vs {built[k]}" for k in wrong[:3])
        why = f"with {changes or 'no changes'} the config builds different shapes ({shown})"
        rows = [
            i for i, (k, d) in enumerate(axes) if k in built and built[k][d] != new_shapes[k][d]
        ]
        involved = sorted(n for n in exponents if any(exponents[n][i] for i in rows))
    raise ConstraintError(
        f"no {type(config).__name__} describes the widened {type(model).__name__}: {why}. "
        + _config_advice(base, new_shapes, axes, involved, exponents)
    )


def _config_advice(
    base: dict[str, tuple[int, ...]],
    new_shapes: dict[str, tuple[int, ...]],
    axes: list[tuple[str, int]],
    fields: list[str],
    exponents: dict[str, list[float]],
) -> str:
    """What to do when no config describes the grown shapes, fitting how they grew: advise an
    integer factor only where some axis grew by a fraction, and name the fields involved."""
    fractional = [i for i, (k, d) in enumerate(axes) if new_shapes[k][d] % base[k][d]]
    if fractional:
        i = fractional[0]
        k, d = axes[i]
        fields = sorted({*fields, *(n for n in exponents if exponents[n][i])})
    if not fields:
        named, verb = "the config's fields", "set"
    else:
        plural = len(fields) > 1
        named = f"config field{'s' if plural else ''} {', '.join(fields[:6])}"
        verb = "set" if plural else "sets"
    if fractional:
        return (
            f"{k} axis {d} grows {base[k][d]} -> {new_shapes[k][d]}, a fraction that {named} "
            "cannot follow while the other axes they size keep theirs. Use an integer factor, "
            "or a dict of widths that grows every layer alike (see autogrow.analyze(model) for "
            "the groups)."
        )
    return (
        f"Every axis grows by a whole factor, but {named} {verb} several of them together "
        "(a head size derived from hidden / heads, one field for groups that grew by different "
        "factors). Grow the groups those fields size by one factor, with a dict of widths "
        "(see autogrow.analyze(model) for the groups)."
    )


def apply_config(model: nn.Module, changes: dict[str, int]) -> Callable[[], None]:
    """Set the new config fields on ``model.config`` and copy every size attribute the modules
    compute from the config (num_heads, head_dim, num_key_value_groups, ...) from a reference
    built on meta. Returns an undo function."""
    config = model.config
    old_fields = {k: getattr(config, k) for k in changes}
    for k, v in changes.items():
        setattr(config, k, v)
    reference = dict(_build_on_meta(model, config).named_modules())
    undo: list[tuple[nn.Module, str, Any]] = []
    for name, module in model.named_modules():
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module):
            continue
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training" or not _is_size(value):
                continue
            new = vars(ref).get(attr, _MISSING)
            if new is not _MISSING and type(new) is type(value) and new != value:
                undo.append((module, attr, value))
                setattr(module, attr, new)

    def restore() -> None:
        for k, v in old_fields.items():
            setattr(config, k, v)
        for module, attr, value in undo:
            setattr(module, attr, value)

    return restore


def _is_size(value: Any) -> bool:
    if type(value) in (int, float):
        return True
    return type(value) is tuple and all(type(v) is int for v in value)


LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers")


def layer_stacks(model: nn.Module) -> dict[str, str]:
    """The layer stacks of a transformers model: ``nn.ModuleList`` name → the config field
    that states its length (an empty dict for other models)."""
    if not is_hf_model(model):
        return {}
    counts = {k: v for k, v in _int_fields(model.config).items() if k in LAYER_COUNTS}
    stacks: dict[str, str] = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or not len(m):
            continue
        if len({type(layer) for layer in m}) != 1 or any(name.startswith(f"{s}.") for s in stacks):
            continue
        field = next((k for k, v in counts.items() if v == len(m)), None)
        if field is not None:
            stacks[name] = field
    return stacks


def sync_layer_count(
    model: nn.Module, stacks: dict[str, str], inserted: list[tuple[str, int | None, int]]
) -> Callable[[], None]:
    """After ``n`` layers were inserted at ``index`` of ``container`` (for each entry) of the
    ``stacks`` found before insertion (:func:`layer_stacks`): set the config's layer count, the
    per-layer config lists (``layer_types``) and each layer's ``layer_idx`` (caches and masks
    index by it). Returns an undo function."""
    config = getattr(model, "config", None)
    by_stack: dict[str, list[tuple[int, int]]] = {}
    for container, index, n in inserted:
        if index is not None:
            by_stack.setdefault(container, []).append((index, n))
    sources: dict[str, list[int]] = {}
    for container, field in stacks.items():
        if container not in by_stack:
            continue
        sources[container] = list(range(getattr(config, field)))
        for index, n in sorted(by_stack[container], reverse=True):
            sources[container][index:index] = [index - 1] * n
    return sync_layer_sources(model, stacks, sources)


def sync_layer_sources(
    model: nn.Module, stacks: dict[str, str], sources: dict[str, list[int]]
) -> Callable[[], None]:
    """After the layers of ``stacks`` (found before, :func:`layer_stacks`) were rebuilt so
    that layer ``i`` of ``container`` is a copy of old layer ``sources[container][i]``: set the
    config's layer count, the per-layer config lists (``layer_types``, taken from each layer's
    source) and each layer's ``layer_idx``. Returns an undo function."""
    config = getattr(model, "config", None)
    undo: list[tuple[Any, str, Any]] = []

    def put(obj: Any, attr: str, value: Any) -> None:
        undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    for container, field in stacks.items():
        if container not in sources:
            continue
        layers = model.get_submodule(container)
        old_count = getattr(config, field)
        put(config, field, len(layers))
        for attr, value in list(vars(config).items()):
            if isinstance(value, list) and len(value) == old_count and not attr.startswith("_"):
                put(config, attr, [value[i] for i in sources[container]])
        for i, layer in enumerate(layers):
            for m in layer.modules():
                if type(getattr(m, "layer_idx", None)) is int and m.layer_idx != i:
                    put(m, "layer_idx", i)

    def restore() -> None:
        for obj, attr, value in reversed(undo):
            setattr(obj, attr, value)

    return restore


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
        changes = grown_config(model, new_shapes, ratios.pop() if ratios else None)
        return lambda result: apply_config(result, changes)

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
        return sync_layer_sources(model, stacks, sources)

    def linear_width(self, module: nn.Module) -> int | None:
        # transformers' Conv1D: y = x @ weight + bias with weight stored (in, out); nf = out.
        if type(module).__name__ == "Conv1D" and type(getattr(module, "nf", None)) is int:
            return module.nf
        return None
