"""Small helpers shared by rules: broadcasting, grouped axes, output metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from .._text import owner_module
from ..axes.terms import Atom, Fixed, Term, prod
from ..tracing.trace import TensorMeta
from .context import COPY, REDUCE, TAPS  # noqa: F401 - re-exported for the rule modules
from .registry import Call, TensorValue

if TYPE_CHECKING:
    from .context import RuleContext


def out_shape(call: Call) -> tuple[int, ...]:
    meta = call.out
    if isinstance(meta, (list, tuple)):
        meta = meta[0]
    assert isinstance(meta, TensorMeta), f"{call.where()} does not produce a tensor"
    return meta.shape


def same_as(value: TensorValue, call: Call) -> TensorValue:
    """The output carries the input's axes unchanged (elementwise ops)."""
    return TensorValue(list(value.terms), out_shape(call))


def broadcast(
    call: Call, ctx: RuleContext, values: list[TensorValue], shape: tuple[int, ...] | None = None
) -> TensorValue:
    """Align axes from the right as broadcasting does and tie the axes that meet."""
    shape = out_shape(call) if shape is None else shape
    nd = len(shape)
    terms: list[Term] = []
    for j in range(nd):
        meeting = [
            v.terms[v.ndim - nd + j]
            for v in values
            if v.ndim - nd + j >= 0 and v.shape[v.ndim - nd + j] == shape[j] and shape[j] != 1
        ]
        if not meeting:
            terms.append(Fixed(shape[j]))
            continue
        for t in meeting[1:]:
            ctx.unify(meeting[0], t, call)
        terms.append(meeting[0])
    for v in values:
        for d in range(v.ndim):
            if v.shape[d] != 1:
                ctx.role(v, d, COPY, call)
    return TensorValue(terms, shape)


def grouped(ctx: RuleContext, term: Term, groups: int, call: Call) -> Term | None:
    """Write an axis as (groups × per-group) and return the per-group part, or None."""
    if groups == 1:
        return term
    if term.size % groups:
        return None
    resolved = ctx.store.resolve(term)
    if isinstance(resolved, Atom):
        info = ctx.store.info(resolved)
        inner = ctx.store.new_atom(term.size // groups, f"{info.origin}/g")
        ctx.unify(resolved, prod([Fixed(groups), inner]), call)
        return inner
    pieces = ctx.store.factor(resolved, [groups, term.size // groups], call.where())
    if pieces is None:
        return None
    ctx.unify(pieces[0], Fixed(groups), call)
    return pieces[1]


def module_at(ctx: RuleContext, qualname: str | None, kind: type | tuple[type, ...]) -> str | None:
    """``qualname`` if it names a module of the given type in the traced model, else None."""
    if qualname is None:
        return None
    try:
        m = ctx.traced.model.get_submodule(qualname)
    except AttributeError:
        return None
    return qualname if isinstance(m, kind) else None


def owner(value: Any) -> str | None:
    """The module owning a parameter value (``layer1.conv.weight`` → ``layer1.conv``)."""
    if not isinstance(value, TensorValue) or value.param is None:
        return None
    return owner_module(value.param)


def tensors(obj: Any) -> list[TensorValue]:
    if isinstance(obj, TensorValue):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in tensors(o)]
    if isinstance(obj, dict):
        return [v for o in obj.values() for v in tensors(o)]
    return []


def is_module(m: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(m, nn.Module) and isinstance(m, kind)
