"""The analysis engine: walk a traced graph once and run each node's rule.

Shaped like ``torch.fx.Interpreter``: :class:`AnalysisPass` has one method per node kind
(``placeholder``, ``get_attr``, ``call_function``/``call_method``/``call_module``, ``output``).
Each call node is normalised to a :class:`~autogrow.rules.Call` (a module call, an ``F.*`` call
and an ATen op on the same parameter become the same call), its rule runs with the
:class:`~autogrow.rules.context.RuleContext`, and the result is an :class:`Analysis`. The rule
registry is an argument: the engine owns no rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx, nn

from ..axes.terms import Atom, Term
from ..rules.context import (
    BLOCKED,
    COPY,
    REDUCE,
    TAPS,
    Analysis,
    AttentionAxes,
    AttrBinding,
    BlockedOp,
    LiteralSize,
    ParamInfo,
    Role,
    RuleContext,
    tensor_values,
)
from ..rules.registry import Call, Dynamic, ParamRef, RuleRegistry, TensorValue, target_name
from ..tracing.trace import TensorMeta, Traced
from .input_sizes import tie_input_sizes

__all__ = [  # the rule-facing names are re-exported here for imports that predate rules.context
    "BLOCKED",
    "COPY",
    "REDUCE",
    "TAPS",
    "Analysis",
    "AnalysisPass",
    "AttentionAxes",
    "AttrBinding",
    "BlockedOp",
    "LiteralSize",
    "ParamInfo",
    "Role",
    "RuleContext",
    "build",
    "normalize",
]


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
        call = Call(name, node, bound, out, qual, m)
        return call, reg.rules.get(name)
    target = node.target
    binding = reg.binding(target)
    name = _display_name(target)
    if binding is None:
        return Call(name, node, {"args": args, "kwargs": kwargs}, out, module), None
    canonical, sig = binding
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        call = Call(name, node, {"args": args, "kwargs": kwargs}, out, module)
        return call, _binding_failed(str(e))
    bound.apply_defaults()
    return Call(canonical, node, dict(bound.arguments), out, module), reg.rules[canonical]


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


class AnalysisPass:
    """One walk over ``traced.graph``: a method per fx node kind, as in ``fx.Interpreter``.

    >>> import torch, autogrow
    >>> from autogrow.graph.build import AnalysisPass
    >>> from autogrow.rules import default_registry
    >>> from autogrow.tracing import trace
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> analysis = AnalysisPass(trace(net, (torch.randn(1, 4),)), default_registry).run()
    >>> sorted(analysis.params)
    ['0.bias', '0.weight', '2.bias', '2.weight']
    """

    def __init__(self, traced: Traced, registry: RuleRegistry) -> None:
        self.traced = traced
        self.ctx = RuleContext(traced, registry)

    def run(self) -> Analysis:
        ctx = self.ctx
        for node in self.traced.graph.nodes:
            ctx.values[node] = getattr(self, node.op)(node, self.traced.meta.get(node))
        tie_input_sizes(ctx)
        _run_constraints(ctx)
        _move_tied_reductions(ctx)
        _settle_roles(ctx)
        return Analysis(
            self.traced,
            ctx.store,
            ctx.params,
            ctx.attrs,
            ctx.literals,
            ctx.blocked,
            ctx.module_order,
            ctx.attention,
            ctx.calls,
            ctx.values,
        )

    # -- one method per node kind --------------------------------------------------------------
    def placeholder(self, node: fx.Node, meta: Any) -> Any:
        if node in self.traced.param_nodes:  # a parameter lifted to an input by torch.export
            return self.ctx.param(self.traced.param_nodes[node])
        if isinstance(meta, TensorMeta):
            value = self.ctx.frozen_tensor(meta, f"model input '{node.target}'")
            value.constant = self.traced.constants.get(node)
            return value
        return meta

    def get_attr(self, node: fx.Node, meta: Any) -> Any:
        if node in self.traced.param_nodes:
            return self.ctx.param(self.traced.param_nodes[node])
        if isinstance(meta, TensorMeta):
            return self.ctx.frozen_tensor(meta, f"constant tensor '{node.target}'")
        return meta

    def call_function(self, node: fx.Node, meta: Any) -> Any:
        return _run_rule(node, self.ctx, meta)

    call_method = call_module = call_function  # normalize() tells the three apart

    def output(self, node: fx.Node, meta: Any) -> Any:
        for v in tensor_values(_to_value(self.ctx, node.args)):
            for t in v.terms:
                self.ctx.freeze(t, "model output")
        return meta


def build(traced: Traced, registry: RuleRegistry) -> Analysis:
    """Run the rules over every node and collect the facts the transforms need."""
    return AnalysisPass(traced, registry).run()


def _run_constraints(ctx: RuleContext) -> None:
    """Run the registered module constraints for the modules the tracer went through: their
    forward became several ops (no call of the module itself was recorded), so nothing else
    ties their parameters to the sizes their forward reads from attributes."""
    if not ctx.registry.constraints:
        return
    called = {id(c.module_obj) for c in ctx.calls.values() if c.module_obj is not None}
    for name, m in ctx.traced.model.named_modules():
        constrain = ctx.registry.constraint_for(m)
        if constrain is None or id(m) in called:
            continue
        prefix = f"{name}." if name else ""
        if any(ctx.uses(prefix + p) for p, _ in m.named_parameters()):
            constrain(m, name, ctx)


def _settle_roles(ctx: RuleContext) -> None:
    """Freeze parameter axes whose uses conflict or carry no units; mark moved-only axes COPY."""
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


def _readers(node: fx.Node) -> int:
    """How many nodes read ``node``'s values: an exported graph's metadata asserts (after a
    ``.to(dtype)``) check only its dtype and shape."""
    return sum(1 for u in node.users if not (target_name(u.target) or "").startswith("_assert"))


def _norm_affine_before(ctx: RuleContext, call: Call, term: Term) -> list[str]:
    """The 1-D affine parameters of the norm whose output alone feeds ``call``, or []."""
    params = ctx.traced.param_nodes
    inputs = [n for n in call.node.all_input_nodes if n not in params]
    if len(inputs) != 1:
        return []
    node = inputs[0]
    while _readers(node) == 1 and target_name(node.target) in _PASS_THROUGH:
        node = node.args[0]
        if not isinstance(node, fx.Node):
            return []
    if _readers(node) != 1:
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
    ctx.calls[node] = call
    involves_tensors = tensor_values(call.args) or _is_tensor_meta(meta)
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
