"""Running the rules over a traced graph: from fx nodes to axis terms and width facts.

The pass walks the graph once. Each node is normalised to a :class:`~autogrow.rules.Call`, its
rule states which axes carry the same units, and the result is an :class:`Analysis`: the
:class:`~autogrow.graph.terms.AxisStore` plus what the transforms need (each parameter's axis
terms and roles, module attributes to keep in sync, literal sizes in forward code, blocked ops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from ..rules.registry import Call, Dynamic, ParamRef, RuleRegistry, TensorValue, target_name
from ..tracing.trace import TensorMeta, Traced
from .terms import Atom, AxisStore, Fixed, Term

COPY, REDUCE, TAPS = "copy", "reduce", "taps"  # TAPS: an axis that carries no units (kernels)
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
            owner = qualname.rsplit(".", 1)[0] if "." in qualname else ""
            if owner not in self.module_order:
                self.module_order.append(owner)
        return TensorValue(list(info.terms), tuple(info.tensor.shape), qualname)

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

    def literal(self, term: Term, value: int, call: Call) -> None:
        """A size that forward code wrote as a literal; checked when the axis would change."""
        if self.traced.kind == "export":
            self.literals.append(LiteralSize(term, int(value), call, soft=True))
        elif not isinstance(value, Dynamic):
            self.literals.append(LiteralSize(term, int(value), call))

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
        for v in _tensor_values(call.args):
            for t in v.terms:
                self.freeze(t, why)
        self.blocked.append(BlockedOp(call, reason))
        return _fresh_frozen(self, call.out, why)


def _tensor_values(obj: Any) -> list[TensorValue]:
    if isinstance(obj, TensorValue):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _tensor_values(o)]
    return []


def _fresh_frozen(ctx: RuleContext, meta: Any, why: str) -> Any:
    if isinstance(meta, TensorMeta):
        return ctx.frozen_tensor(meta, why)
    if isinstance(meta, (list, tuple)):
        return type(meta)(_fresh_frozen(ctx, m, why) for m in meta)
    return meta


def _to_value(ctx: RuleContext, arg: Any) -> Any:
    """Replace fx nodes in an argument by their analysed values (ints become Dynamic)."""
    if isinstance(arg, fx.Node):
        v = ctx.values.get(arg)
        if isinstance(v, bool) or not isinstance(v, int) or isinstance(v, Dynamic):
            return v
        return Dynamic(v)
    if isinstance(arg, (list, tuple)):
        return type(arg)(_to_value(ctx, a) for a in arg)
    if isinstance(arg, dict):
        return {k: _to_value(ctx, a) for k, a in arg.items()}
    if isinstance(arg, slice):
        return slice(_to_value(ctx, arg.start), _to_value(ctx, arg.stop), _to_value(ctx, arg.step))
    return arg


def _module_of(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return str(path) if path else None


def _is_tensor_meta(meta: Any) -> bool:
    if isinstance(meta, TensorMeta):
        return True
    if isinstance(meta, (list, tuple)):
        return any(_is_tensor_meta(m) for m in meta)
    return False


def normalize(node: fx.Node, ctx: RuleContext) -> tuple[Call, Any] | None:
    """Turn an fx node into a canonical Call and its rule; None when no rule knows the op."""
    out = ctx.traced.meta.get(node)
    module = _module_of(node)
    source = None
    args = _to_value(ctx, tuple(node.args))
    kwargs = _to_value(ctx, dict(node.kwargs))
    reg = ctx.registry
    if node.op == "call_module":
        m = ctx.traced.model.get_submodule(str(node.target))
        found = reg.for_module(m)
        qual = str(node.target)
        if found is None:
            return Call(type(m).__name__, node, {"args": args, "kwargs": kwargs}, out, qual), None
        kind, fn = found
        if kind == "module":
            call = Call(type(m).__name__, node, {"args": args, "kwargs": kwargs}, out, qual, m)
            return call, fn
        name, bound = fn(m, qual, args, kwargs)
        bound = {k: (ctx.param(v.name) if isinstance(v, ParamRef) else v) for k, v in bound.items()}
        call = Call(name, node, bound, out, qual, m, source)
        return call, reg.rules.get(name)
    target = node.target
    binding = reg.binding(target)
    name = _display_name(target)
    if binding is None:
        return Call(name, node, {"args": args, "kwargs": kwargs}, out, module, None, source), None
    canonical, sig = binding
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        call = Call(name, node, {"args": args, "kwargs": kwargs}, out, module, None, source)
        return call, _binding_failed(str(e))
    bound.apply_defaults()
    return Call(canonical, node, dict(bound.arguments), out, module, None, source), reg.rules[
        canonical
    ]


def _display_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return str(target)
    mod = getattr(target, "__module__", None) or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _binding_failed(message: str) -> Callable[[Call, RuleContext], Any]:
    def rule(call: Call, ctx: RuleContext) -> Any:
        return ctx.block(call, f"arguments do not match the rule's signature ({message})")

    return rule


def build(traced: Traced, registry: RuleRegistry) -> Analysis:
    """Run the rules over every node and collect the facts the transforms need."""
    ctx = RuleContext(traced, registry)
    for node in traced.graph.nodes:
        meta = traced.meta.get(node)
        if node.op in ("placeholder", "get_attr"):
            if node in traced.param_nodes:  # fx get_attr, or a parameter lifted by export
                ctx.values[node] = ctx.param(traced.param_nodes[node])
            elif isinstance(meta, TensorMeta):
                what = "model input" if node.op == "placeholder" else "constant tensor"
                ctx.values[node] = ctx.frozen_tensor(meta, f"{what} '{node.target}'")
            else:
                ctx.values[node] = meta
        elif node.op == "output":
            for v in _tensor_values(_to_value(ctx, node.args)):
                for t in v.terms:
                    ctx.freeze(t, "model output")
        else:
            ctx.values[node] = _run_rule(node, ctx, meta)
    _move_tied_reductions(ctx)
    for info in ctx.params.values():
        for d, roles in enumerate(info.roles):
            if TAPS in roles:
                ctx.freeze(info.terms[d], f"{info.name} axis {d} carries no units")
            elif len(roles) > 1:  # e.g. a tied embedding: rows copied in one use, summed in another
                ctx.freeze(info.terms[d], f"{info.name} axis {d} is both copied and reduced")
            elif not roles:
                term = ctx.store.resolve(info.terms[d])
                if isinstance(term, Atom) and ctx.store.ties.degree(term.id) == 0:
                    # Tied to nothing: no op used this axis as units, so it must not change.
                    ctx.freeze(term, f"{info.name} axis {d} is not used as units by any op")
                else:  # only moved around (expand, cat, view): its values are copied
                    roles.add(COPY)
    return Analysis(
        traced,
        ctx.store,
        ctx.params,
        ctx.attrs,
        ctx.literals,
        ctx.blocked,
        ctx.module_order,
        ctx.attention,
    )


# Ops between a norm and a tied output projection that keep the hidden axis as it is.
_PASS_THROUGH = {
    "getitem", "slice", "view", "reshape", "_unsafe_view", "contiguous", "clone", "to",
    "_to_copy", "alias", "dropout", "type_as", "float",
}  # fmt: skip
_NORMS = {"layer_norm", "rms_norm", "mul"}


def _move_tied_reductions(ctx: RuleContext) -> None:
    """Give a tied embedding's division to the norm in front of its output projection.

    A tied embedding matrix is copied by the input lookup and summed over by the output
    projection, so one tensor cannot take both the copy and the division. When the projection
    reads the output of a norm's per-unit affine (``γ·n(x) + β``, or RMSNorm's ``w·n(x)``)
    and nothing else reads it, dividing γ and β by the replica shares instead divides the
    projection's input, which is exact: the tied matrix is then only copied.
    """
    calls: dict[tuple[str, int], list[Call]] = {}
    for name, d, call in ctx.reductions:
        calls.setdefault((name, d), []).append(call)
    for (name, d), reducing in calls.items():
        info = ctx.params[name]
        if info.roles[d] != {COPY, REDUCE} or len(reducing) != 1:
            continue
        affine = _norm_affine_before(ctx, reducing[0], info.terms[d])
        if affine:
            for p in affine:
                ctx.params[p].roles[0] = {REDUCE}
            info.roles[d] = {COPY}


def _norm_affine_before(ctx: RuleContext, call: Call, term: Term) -> list[str]:
    """The 1-D affine parameters of the norm whose output alone feeds ``call``, or []."""
    params = ctx.traced.param_nodes
    inputs = [n for n in call.node.all_input_nodes if n not in params]
    if len(inputs) != 1:
        return []
    node = inputs[0]
    while len(node.users) == 1 and target_name(node.target) in _PASS_THROUGH:
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return []
    if len(node.users) != 1:
        return []
    if node.op == "call_module":
        names = [f"{node.target}.{k}" for k in ("weight", "bias")]
        affine = [n for n in names if n in ctx.params]
        if not isinstance(ctx.traced.model.get_submodule(str(node.target)), nn.LayerNorm):
            return []
    elif target_name(node.target) in _NORMS:
        affine = [params[n] for n in node.all_input_nodes if n in params]
        affine = [ctx._canonical.get(n, n) for n in affine]
    else:
        return []
    target = ctx.store.resolve(term)
    for p in affine:
        info = ctx.params.get(p)
        if (
            info is None
            or len(info.terms) != 1
            or info.roles[0] != {COPY}
            or ctx.store.resolve(info.terms[0]) != target
        ):
            return []
    return affine


def _run_rule(node: fx.Node, ctx: RuleContext, meta: Any) -> Any:
    call, rule = normalize(node, ctx)
    call.locate = ctx.traced.source_of
    involves_tensors = _tensor_values(call.args) or _is_tensor_meta(meta)
    if rule is None:
        if not involves_tensors:
            return meta  # plain Python arithmetic on sizes, asserts ...
        return ctx.block(call, "autogrow has no rule for this op")
    try:
        result = rule(call, ctx)
    except Exception as e:  # noqa: BLE001 - a failing rule must freeze, never guess
        return ctx.block(call, f"rule failed: {type(e).__name__}: {e}")
    if not _matches(result, meta):
        return ctx.block(call, "rule result does not match the traced shapes")
    return result


def _matches(result: Any, meta: Any) -> bool:
    if isinstance(meta, TensorMeta):
        return (
            isinstance(result, TensorValue)
            and tuple(result.shape) == meta.shape
            and len(result.terms) == len(meta.shape)
            and all(t.size == s for t, s in zip(result.terms, meta.shape))
        )
    if isinstance(meta, (list, tuple)) and _is_tensor_meta(meta):
        return (
            isinstance(result, (list, tuple))
            and len(result) == len(meta)
            and all(_matches(r, m) for r, m in zip(result, meta))
        )
    return not isinstance(result, TensorValue)


def owner_module(model: nn.Module, qualname: str) -> str:
    """The qualified name of the module that owns a parameter."""
    return qualname.rsplit(".", 1)[0] if "." in qualname else ""
