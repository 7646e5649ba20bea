"""A transformers config's fields as exact relations on the width groups (no table per
architecture): each numeric field, and each entry of a per-stage list such as ``hidden_sizes``,
is doubled in turn and the model is built on the meta device; the parameter axes whose sizes
change give that field's exponents. An axis that grows as a power of every field it depends on
is a monomial of the fields (``hidden_size``, ``expand × hidden_size``, ``int(dim ×
mlp_ratio)``); read through the axis' layout (a group, or a group times frozen head sizes), it
states the group's width. Head counts, which shapes cannot show where the head size is derived
(``hidden / heads``), are matched by name and value to the query heads the width graph saw at
attention. Sums (a fused ``qkv_proj`` of heads and key/value heads) and the config class's own
validation are judged exactly by :func:`relations_for`'s check: the grown config is built on
meta and every parameter axis compared with the plan.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..axes.relations import Blame, Monomial, SizeRelations
from ..axes.sizes import new_size
from ..axes.terms import Atom, Fixed, Prod

if TYPE_CHECKING:
    from ..rules.context import Analysis

HEAD_COUNTS = (
    "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads",
    "decoder_attention_heads",
)  # fmt: skip
KV_HEAD_COUNTS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num")
Shapes = dict[str, tuple[int, ...]]
Axis = tuple[str, int]


@contextmanager
def quiet() -> Iterator[None]:
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


def shapes(model: nn.Module) -> Shapes:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return {k: tuple(v.shape) for k, v in named.items()}


def build_on_meta(model_type: type, config: Any) -> nn.Module:
    with torch.device("meta"), quiet():
        return model_type(config)


def numeric_fields(config: Any) -> dict[str, int | float]:
    """The config's sizes and ratios: positive int fields (not token ids), float fields of at
    least 1 (ratios such as ``mlp_ratio``; probabilities and epsilons size nothing) and the
    int entries of list fields, named ``field[i]``."""
    out: dict[str, int | float] = {}
    for k, v in vars(config).items():
        if k.startswith("_") or k.endswith("_token_id"):
            continue
        if type(v) is int and v >= 1 or type(v) is float and v >= 1 and math.isfinite(v):
            out[k] = v
        elif type(v) in (list, tuple) and 0 < len(v) <= 16:
            out.update({f"{k}[{i}]": x for i, x in enumerate(v) if type(x) is int and x >= 1})
    return out


def field_roots(name: str) -> list[str]:
    """The config attributes behind a field name: ``a`` for ``a`` and ``a[i]``, ``a`` and
    ``b`` for the joint field ``a=b``."""
    return [part.partition("[")[0] for part in name.split("=")]


def get_field(config: Any, name: str) -> int | float:
    """The value of ``field``, ``field[i]`` or the joint field ``a=b`` (both equal)."""
    part = name.split("=")[0]
    if part.endswith("]"):
        field, index = part[:-1].split("[")
        return getattr(config, field)[int(index)]
    return getattr(config, part)


def set_field(config: Any, name: str, value: int | float) -> None:
    """Set ``field``, entry ``field[i]`` (lists stay lists, tuples tuples) or every part of
    the joint field ``a=b``."""
    for part in name.split("="):
        if part.endswith("]"):
            field, index = part[:-1].split("[")
            old = getattr(config, field)
            items = list(old)
            items[int(index)] = value
            setattr(config, field, type(old)(items))
        else:
            setattr(config, part, value)


def configured(config: Any, changes: Mapping[str, int | float]) -> Any:
    """``config`` with ``changes``, as ``from_pretrained`` would read it back: through
    ``to_dict`` / ``from_dict``, so that the config class validates the fields together and
    recomputes what it derives (a field it derives from others is then no free size)."""
    out = copy.deepcopy(config)
    for name, value in changes.items():
        set_field(out, name, value)
    with quiet():
        return type(config).from_dict(out.to_dict())


def _key(model_type: type, config: Any) -> str:
    return f"{model_type.__module__}.{model_type.__qualname__}:" + json.dumps(
        config.to_dict(), sort_keys=True, default=str
    )


_CONFIGS: dict[str, Any] = {}  # probe keys → configs (lru_cache needs hashable arguments)


def probe(model: nn.Module) -> tuple[Shapes, dict[str, dict[Axis, float]]]:
    """The shapes ``type(model)(model.config)`` builds, and for each numeric field the
    ``log2`` size ratio of every axis that changes when the field is doubled (fields that
    change no shape, add or remove tensors, or make an invalid config are left out). Cached
    per model class and config."""
    key = _key(type(model), model.config)
    _CONFIGS[key] = (type(model), model.config)
    try:
        return _probe(key)
    finally:
        _CONFIGS.pop(key, None)


@lru_cache(maxsize=8)
def _probe(key: str) -> tuple[Shapes, dict[str, dict[Axis, float]]]:
    model_type, config = _CONFIGS[key]
    base = shapes(build_on_meta(model_type, configured(config, {})))
    exponents: dict[str, dict[Axis, float]] = {}
    structural: list[str] = []
    fields = numeric_fields(config)
    for name, value in fields.items():
        changed = _doubled(model_type, config, base, name, value)
        if changed is None:
            structural.append(name)
        elif changed:
            exponents[name] = changed
    # Two equal fields that only change together (ResNet's embedding_size and hidden_sizes[0]:
    # one alone adds a shortcut projection) are one joint field ``a=b``.
    for i, a in enumerate(structural):
        for b in structural[i + 1 :]:
            if fields[a] == fields[b] and type(fields[a]) is int:
                changed = _doubled(model_type, config, base, f"{a}={b}", fields[a])
                if changed:
                    exponents[f"{a}={b}"] = changed
    return base, exponents


def _doubled(
    model_type: type, config: Any, base: Shapes, name: str, value: int | float
) -> dict[Axis, float] | None:
    """The ``log2`` size ratio of each axis that changes when field ``name`` is doubled; None
    when that adds or removes tensors (a structural field: layers, stages, a shortcut), an
    empty dict when it changes no shape or makes an invalid config."""
    try:
        built = shapes(build_on_meta(model_type, configured(config, {name: value * 2})))
    except Exception:  # noqa: BLE001 - an invalid combination: not a free size
        return {}
    if built.keys() != base.keys():
        return None
    return {
        (k, d): math.log2(built[k][d] / s[d])
        for k, s in base.items()
        for d in range(len(s))
        if len(built[k]) == len(s) and built[k][d] != s[d] and s[d] > 0
    }


def axis_monomials(
    base: Shapes, exponents: dict[str, dict[Axis, float]], values: Mapping[str, float]
) -> tuple[dict[Axis, Monomial], dict[Axis, set[str]]]:
    """Each axis' size as a monomial of the fields where every exponent is whole, and every
    changing axis' fields (monomial or not)."""
    involved: dict[Axis, set[str]] = {}
    for name, column in exponents.items():
        for axis in column:
            involved.setdefault(axis, set()).add(name)
    monomials = {}
    for axis, names in involved.items():
        exps = {n: exponents[n][axis] for n in names}
        if any(abs(e - round(e)) > 1e-9 for e in exps.values()):
            continue
        pairs = tuple(sorted((n, round(e)) for n, e in exps.items()))
        size = base[axis[0]][axis[1]]
        monomials[axis] = Monomial(size / Monomial(1.0, pairs)(values), pairs)
    return monomials, involved


def relations_for(model: nn.Module, analysis: Analysis) -> SizeRelations:
    """``model.config``'s fields as relations on the groups of ``analysis``, with an exact
    check that builds the grown config on meta."""
    config, store = model.config, analysis.store
    base, exponents = probe(model)
    values = {n: get_field(config, n) for n in exponents}
    head_fields = {n: v for n, v in numeric_fields(config).items() if n in HEAD_COUNTS}
    kv_fields = {n: v for n, v in numeric_fields(config).items() if n in KV_HEAD_COUNTS}
    values.update(head_fields)
    values.update(kv_fields)
    monomials, involved = axis_monomials(base, exponents, values)
    widths_of: dict[int, list[Monomial]] = {}

    def add(atom_id: int, m: Monomial) -> None:
        if all(m != other for other in widths_of.setdefault(atom_id, [])):
            widths_of[atom_id].append(m)

    def add_term(term: Any, m: Monomial) -> None:
        """``m`` is the size of ``term``: a group, or a group times sizes that stay."""
        term = store.resolve(term)
        if isinstance(term, Atom):
            add(term.id, m)
            return
        if not isinstance(term, Prod):
            return
        free, constant = [], 1
        for f in map(store.resolve, term.factors):
            if isinstance(f, Fixed) or isinstance(f, Atom) and store.info(f).frozen:
                constant *= f.size
            elif isinstance(f, Atom):
                free.append(f)
            else:
                return
        if len(free) == 1:
            add(free[0].id, Monomial(m.coefficient / constant, m.exponents))

    axes = [(k, d) for k, i in analysis.params.items() if k in base for d in range(len(i.terms))]
    for k, d in axes:
        if (k, d) in monomials:
            add_term(analysis.params[k].terms[d], monomials[(k, d)])
    for attention in analysis.attention:
        # Shapes cannot tell heads from head size where the config derives one from the
        # other: the head count is matched by value to the heads seen at attention.
        count = new_size(store, attention.heads, {})
        field = next((n for n, v in head_fields.items() if v == count), None)
        if field is not None:
            add_term(attention.heads, Monomial(1.0, ((field, 1),)))
        # Grouped-query heads: query heads = key/value heads × a fixed group size, and the
        # key/value count, fused with the queries in one projection, shows in no shape alone.
        for atom in store.leaf_atoms(attention.heads):
            kv = next((n for n, v in kv_fields.items() if v == atom.size), None)
            if kv is not None:
                add(atom.id, Monomial(1.0, ((kv, 1),)))

    def check(new_values: Mapping[str, int | float], widths: Mapping[int, int]) -> Blame | None:
        changes = {n: v for n, v in new_values.items() if v != values[n]}
        name = type(config).__name__
        try:
            built = shapes(build_on_meta(type(model), configured(config, changes)))
        except Exception as e:  # noqa: BLE001 - the config class rejects the combination
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            why = f"{name} rejects {changes}: {lines[-1] if lines else type(e).__name__}"
            return Blame(frozenset(changes), why)
        if built.keys() != base.keys():
            return Blame(frozenset(changes), f"{name} with {changes} builds other tensors")
        for k, d in axes:
            term = analysis.params[k].terms[d]
            want = new_size(store, term, widths)
            if built[k][d] != want:
                names = set(involved.get((k, d), ()))
                for atom in store.leaf_atoms(term):
                    names |= {n for m in widths_of.get(atom.id, []) for n in m.names}
                frozen = [f for a in store.leaf_atoms(term) if (f := store.info(a).frozen)]
                # every distinct reason: an axis laid out as heads × head size says both
                stays = f"; part of it cannot grow: {'; and '.join(dict.fromkeys(frozen))}"
                stays = stays if frozen else ""
                why = (
                    f"{name} with {changes or 'no changes'} builds {k} axis {d} of size "
                    f"{built[k][d]}, the plan needs {want}{stays}"
                )
                return Blame(frozenset(names), why)
        return None

    return SizeRelations(
        values=values,
        integer={n for n, v in values.items() if type(v) is int},
        widths_of=widths_of,
        check=check,
        what="config field",
    )
