"""What a rule sees and may do: :class:`RuleContext`, and the facts it collects (:class:`Analysis`).

Rules (``autogrow/rules/*.py``) receive a :class:`~autogrow.rules.Call` and a
:class:`RuleContext`; they read values, state which axes carry the same units, declare how each
parameter axis is used (a :class:`Role`), and record module attributes and literal sizes that a
width change must keep in step. The engine that walks the traced graph and calls the rules is
:mod:`autogrow.graph.build`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import fx, nn

from .._text import owner_module
from ..axes.store import AxisStore
from ..axes.terms import Fixed, Term
from ..tracing.trace import TensorMeta, Traced, TracerKind
from .registry import Call, Dynamic, RuleRegistry, TensorValue


class Role(str, Enum):
    """How an op uses a parameter axis. A ``str`` enum: ``Role.COPY == "copy"``, so rules
    written with the plain strings keep working."""

    COPY = "copy"  # units indexed one-to-one: rows of the producing layer, norm parameters
    REDUCE = "reduce"  # summed against an activation axis: outgoing weights, divided on growth
    TAPS = "taps"  # carries no units at all (kernel taps, positions)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # shown like the plain string it equals
        return repr(self.value)


COPY, REDUCE, TAPS = Role.COPY, Role.REDUCE, Role.TAPS
BLOCKED = "blocked: "  # marks freeze reasons that come from an op without a (working) rule


@dataclass
class ParamInfo:
    """A parameter or buffer: its axis terms and how ops use each axis."""

    name: str
    tensor: torch.Tensor
    terms: list[Term]
    roles: list[set[str]]


@dataclass
class AttrBinding:
    """``module.attr`` must equal ``compute(size)`` after widening (``size`` maps a term to its
    new size)."""

    module: str
    attr: str
    compute: Callable[[Callable[[Term], int]], Any]


@dataclass
class LiteralSize:
    """A size forward code fixes: a literal (``x.view(-1, 400)``) or, when ``value`` is a term,
    the size of another axis read with ``x.size()`` whose layout differs."""

    term: Term
    value: int | Term
    call: Call
    soft: bool = False  # export graphs specialise every size: sync an attribute if one matches
    index: int | None = None  # position among the op's sizes (``size_leaves``), if known
    # computed at run time from other sizes (``C // self.num_heads``, C read from a shape):
    # widen evaluates it with the new sizes
    computed: bool = False

    def advice(self, model: nn.Module) -> str:
        """What to do about this literal when widening would change it and probing found no
        module attribute behind it (the HardcodedSizeError's advice)."""
        leave = "or leave those groups out: widen(model, {...}) with the groups you want."
        return (
            "No module attribute of the modules that wrote it (or of their children) sizes "
            "it. Compute it from the tensor instead (x.flatten(1), x.view(x.size(0), -1)), "
            f"keep it in a module attribute, {leave}"
        )


@dataclass
class BlockedOp:
    """An op without a rule (or whose rule failed): its axes are frozen."""

    call: Call
    reason: str


@dataclass
class AttentionAxes:
    """The axes of one attention call: query heads, the query·key size and the value size per
    head (model configs describe these with one number each, so integrations read them here)."""

    heads: Term
    qk_dim: Term
    v_dim: Term
    module: str | None


@dataclass
class Analysis:
    traced: Traced
    store: AxisStore
    params: dict[str, ParamInfo]
    attrs: list[AttrBinding] = field(default_factory=list)
    literals: list[LiteralSize] = field(default_factory=list)
    blocked: list[BlockedOp] = field(default_factory=list)
    module_order: list[str] = field(default_factory=list)
    attention: list[AttentionAxes] = field(default_factory=list)
    # Per call node: its canonical Call, and the value its rule returned (read by checks that
    # walk the graph again, as the norm-fill check does).
    calls: dict[fx.Node, Call] = field(default_factory=dict)
    values: dict[fx.Node, Any] = field(default_factory=dict)


class RuleContext:
    """What a rule may do: read values, state facts about axes, record attribute updates."""

    def __init__(self, traced: Traced, registry: RuleRegistry) -> None:
        self.traced = traced
        self.registry = registry
        self.store = AxisStore()
        self.params: dict[str, ParamInfo] = {}
        self.values: dict[fx.Node, Any] = {}
        self.attrs: list[AttrBinding] = []
        self.literals: list[LiteralSize] = []
        self.blocked: list[BlockedOp] = []
        self._named: dict[str, torch.Tensor] = {}
        self._canonical: dict[str, str] = {}
        first: dict[int, str] = {}
        model = traced.model
        for name, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]:
            # Tied tensors (one object under several names) must be one set of axes.
            self._canonical[name] = first.setdefault(id(t), name)
            self._named[name] = t
        self.module_order: list[str] = []
        self.attention: list[AttentionAxes] = []
        self.reductions: list[tuple[str, int, Call]] = []  # (param, axis, call) summing over it
        self.calls: dict[fx.Node, Call] = {}

    # -- values ------------------------------------------------------------------------------
    def param(self, qualname: str) -> TensorValue:
        """The value of a parameter or buffer, with one fresh atom per axis on first use."""
        qualname = self._canonical.get(qualname, qualname)
        info = self.params.get(qualname)
        if info is None:
            tensor = self._named[qualname]
            # Integer buffers (indices, counters) hold positions, not units: never widened.
            frozen = None if tensor.is_floating_point() else f"{qualname} is not floating point"
            terms: list[Term] = [
                self.store.new_atom(s, f"{qualname}:{d}", frozen=frozen) if s > 1 else Fixed(s)
                for d, s in enumerate(tensor.shape)
            ]
            info = ParamInfo(qualname, tensor, terms, [set() for _ in tensor.shape])
            self.params[qualname] = info
            owner = owner_module(qualname)
            if owner not in self.module_order:
                self.module_order.append(owner)
        return TensorValue(list(info.terms), tuple(info.tensor.shape), qualname)

    def uses(self, qualname: str) -> bool:
        """Whether the graph read this parameter or buffer (under this name or a tied one)."""
        return self._canonical.get(qualname, qualname) in self.params

    def frozen_tensor(self, meta: TensorMeta, why: str) -> TensorValue:
        terms: list[Term] = [
            self.store.new_atom(s, why, frozen=why) if s > 1 else Fixed(s) for s in meta.shape
        ]
        return TensorValue(terms, meta.shape)

    def fixed_tensor(self, shape: tuple[int, ...]) -> TensorValue:
        return TensorValue([Fixed(s) for s in shape], tuple(shape))

    # -- facts -------------------------------------------------------------------------------
    def unify(self, a: Term, b: Term, call: Call) -> None:
        self.store.unify(a, b, call.where())

    def freeze(self, t: Term, why: str) -> None:
        self.store.freeze(t, why)

    def uniform(self, t: Term, call: Call) -> None:
        self.store.require_uniform(t, call.where())

    def role(self, value: TensorValue, dim: int, role: str, call: Call) -> None:
        """Declare how ``call`` uses an axis of ``value``: ``copy`` (units indexed one-to-one)
        or ``reduce`` (summed against an activation axis, so replicas must share the weight).
        Summing over an axis that is not a parameter's cannot be compensated: it is frozen."""
        dim = value.dim(dim)
        if value.param is not None:
            self.params[value.param].roles[dim].add(role)
            if role == REDUCE:
                self.reductions.append((value.param, dim, call))
        elif role == REDUCE:
            self.freeze(value.terms[dim], f"contraction over an activation axis at {call.where()}")

    def attention_axes(self, heads: Term, qk_dim: Term, v_dim: Term, call: Call) -> None:
        """Record an attention call's per-head axes (see :class:`AttentionAxes`)."""
        self.attention.append(AttentionAxes(heads, qk_dim, v_dim, call.module))

    def set_attr(self, module: str | None, attr: str, compute: Callable) -> None:
        if module is not None:
            self.attrs.append(AttrBinding(module, attr, compute))

    def literal(self, term: Term, value: int, call: Call, index: int | None = None) -> None:
        """A size that forward code wrote as a literal; checked when the axis would change.
        ``index``: its position among the sizes the op was given (its arguments after the
        input tensor, flattened), which lets widen find the attribute it came from."""
        if self.traced.kind == TracerKind.EXPORT:
            self.literals.append(LiteralSize(term, int(value), call, soft=True, index=index))
        elif not isinstance(value, Dynamic):
            self.literals.append(LiteralSize(term, int(value), call, index=index))
        elif value.term is None:
            self.literals.append(LiteralSize(term, int(value), call, index=index, computed=True))

    def same_size(self, term: Term, source: Term, call: Call) -> None:
        """Forward code sizes ``term`` by reading ``source`` (``x.view(b, y.size(1))``): tie the
        axes when their layouts agree, else check at planning time that the sizes still match."""
        if self.store.can_unify(term, source):
            self.unify(term, source, call)
        else:
            self.literals.append(LiteralSize(term, source, call))

    def block(self, call: Call, reason: str) -> Any:
        """Freeze every axis an op touches and give its outputs fresh frozen axes."""
        why = f"{call.where(full=True)}: {BLOCKED}{reason}"
        for v in tensor_values(call.args):
            for t in v.terms:
                self.freeze(t, why)
        self.blocked.append(BlockedOp(call, reason))
        return _fresh_frozen(self, call.out, why)


def tensor_values(obj: Any) -> list[TensorValue]:
    if isinstance(obj, TensorValue):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in tensor_values(o)]
    return []


def _fresh_frozen(ctx: RuleContext, meta: Any, why: str) -> Any:
    if isinstance(meta, TensorMeta):
        return ctx.frozen_tensor(meta, why)
    if isinstance(meta, (list, tuple)):
        return type(meta)(_fresh_frozen(ctx, m, why) for m in meta)
    return meta
