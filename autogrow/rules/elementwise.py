"""Rules for elementwise ops: unary ops keep the axes, n-ary ops tie broadcast axes.

An activation applies the same function to every unit, so a replicated unit stays a replica.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..axes.terms import Fixed, prod
from .common import COPY, broadcast, out_shape, same_as, tensors
from .registry import Call, Dynamic, ParamRef, RuleSet, TensorValue, target_name

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


UNARY = (
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign", "logsigmoid", "tanhshrink",
    "hardshrink", "softshrink", "threshold", "exp", "log", "log1p", "sqrt", "rsqrt", "abs", "neg",
    "sin", "cos", "erf", "sign", "reciprocal", "square", "clamp", "clip", "clamp_min", "clamp_max",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "native_dropout", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16",
    "to", "_to_copy", "alias", "type", "type_as", "cpu", "cuda", "requires_grad",
    "stochastic_depth", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like", "lift_fresh_copy", "nan_to_num", "floor", "ceil", "round", "trunc", "frac",
    "logical_not", "bitwise_not", "invert", "isnan", "isinf", "_assert_tensor_metadata", "fill",
    "zero",
)  # fmt: skip

COPIES = ("lift_fresh_copy", "clone", "detach", "alias", "contiguous")

BINARY = (
    "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "floordiv", "remainder",
    "fmod", "maximum", "minimum", "pow", "eq", "ne", "lt", "le", "gt", "ge", "where", "masked_fill",
    "logical_and", "logical_or", "bitwise_and", "bitwise_or", "atan2", "lerp", "addcmul",
    "addcdiv", "copysign", "hypot", "xlogy", "ifelse", "bitwise_xor", "logical_xor", "__and__",
    "__or__", "__xor__", "and_", "or_", "xor",
)  # fmt: skip


@rules.rule("unary", signature="input, *args, **kwargs", names=UNARY)
def unary(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    others = tensors(call.args["args"]) + tensors(call.args["kwargs"])
    if not isinstance(x, TensorValue):
        return ctx.block(call, "first argument is not a tensor")
    if call.out is None:  # aten._assert_tensor_metadata and friends check, and return nothing
        return None
    if others:  # x.type_as(y), clamp(x, min=t): only x's layout reaches the output
        if call.node.target in ("type_as", "to"):
            return same_as(x, call)
        return broadcast(call, ctx, [x, *others])
    if x.param is not None:
        for d in range(x.ndim):
            ctx.role(x, d, COPY, call)
    if call.name == "native_dropout":
        return (same_as(x, call), same_as(x, call))
    out = same_as(x, call)
    if (
        target_name(call.node.target) in COPIES
    ):  # an index list written in code stays known through its copies
        out.constant = x.constant
    return out


@rules.rule("nary", signature="*args, **kwargs", names=BINARY)
def nary(call: Call, ctx: RuleContext) -> Any:
    values = tensors(call.args["args"]) + tensors(call.args["kwargs"])
    if not values:
        return _size_arithmetic(call)
    return broadcast(call, ctx, values)


def _size_arithmetic(call: Call) -> Any:
    """``h * w`` on sizes: a product of the axes they came from; ``c // k`` remembers the axis
    and ``k`` (``Dynamic.quotient``); other arithmetic forgets them."""
    args = call.args["args"]
    out = call.out
    if isinstance(out, bool) or not isinstance(out, int):
        return out
    if not any(isinstance(a, Dynamic) for a in args):
        return out
    if target_name(call.node.target) == "mul" and len(args) == 2:
        factors = [
            a.term if isinstance(a, Dynamic) else (Fixed(a) if type(a) is int else None)
            for a in args
        ]
        if all(f is not None for f in factors):
            return Dynamic(out, prod(factors))
    if target_name(call.node.target) == "floordiv" and len(args) == 2:
        width, k = args
        if isinstance(width, Dynamic) and width.term is not None and type(k) is int and k > 1:
            return Dynamic(out, quotient=(width.term, k))  # C // self.num_heads: a head's size
    return Dynamic(out)


@rules.rule("prelu", signature="input, weight")
def prelu(call: Call, ctx: RuleContext) -> Any:
    x, w = call.args["input"], call.args["weight"]
    if w.shape[0] > 1:  # one slope per channel (axis 1)
        ctx.unify(w.terms[0], x.terms[1 if x.ndim > 1 else 0], call)
        ctx.role(w, 0, COPY, call)
    mod = call.module if isinstance(call.module_obj, nn.PReLU) else None
    wt = w.terms
    ctx.set_attr(mod, "num_parameters", lambda size: size(wt[0]))
    return same_as(x, call)


@rules.module(nn.PReLU)
def _prelu_module(m: nn.PReLU, name: str, args: tuple, kwargs: dict):
    return "prelu", {"input": args[0], "weight": ParamRef(f"{name}.weight")}


_ACTIVATION_MODULES = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.GELU: "gelu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.Hardtanh: "hardtanh", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.SELU: "selu",
    nn.CELU: "celu", nn.Mish: "mish", nn.Softplus: "softplus", nn.Softsign: "softsign",
    nn.LogSigmoid: "logsigmoid", nn.Tanhshrink: "tanhshrink", nn.Hardshrink: "hardshrink",
    nn.Softshrink: "softshrink", nn.Threshold: "threshold", nn.Dropout: "dropout",
    nn.Dropout1d: "dropout", nn.Dropout2d: "dropout", nn.Dropout3d: "dropout",
    nn.AlphaDropout: "dropout", nn.FeatureAlphaDropout: "dropout", nn.Identity: "contiguous",
}  # fmt: skip


def _activation_module(m: nn.Module, name: str, args: tuple, kwargs: dict):
    return "unary", {"input": args[0], "args": (), "kwargs": {}}


for _type in _ACTIVATION_MODULES:
    rules.module(_type)(_activation_module)


@rules.rule("glu", signature="input, dim=-1")
def glu(call: Call, ctx: RuleContext) -> Any:
    """a * sigmoid(b) for the two halves: the halves multiply unit by unit, so they are tied."""
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    halves = ctx.store.split(x.terms[d], [x.shape[d] // 2] * 2, call.where())
    if halves is None:
        return ctx.block(call, "cannot halve this axis")
    ctx.unify(halves[0], halves[1], call)
    terms = list(x.terms)
    terms[d] = halves[0]
    return TensorValue(terms, out_shape(call))


@rules.module(nn.GLU)
def _glu_module(m: nn.GLU, name: str, args: tuple, kwargs: dict):
    return "glu", {"input": args[0], "dim": m.dim}
