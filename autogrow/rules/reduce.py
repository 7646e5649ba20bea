"""Rules for reductions, softmax and pooling.

Replicating a unit changes a sum, a p-norm or a softmax over the widened axis, so those freeze
it; a mean or a biased variance is unchanged only under uniform replication; a max (and the
``p = ±inf`` norm) is unchanged.
Pooling reduces spatial axes and keeps the channel axis.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import nn

from ..axes.terms import Fixed
from .common import out_shape, same_as
from .context import tensor_values
from .registry import Call, RuleSet, TensorValue

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


def _reduced_dims(x: TensorValue, dim: Any) -> list[int]:
    if dim is None or dim == [] or dim == ():
        return list(range(x.ndim))
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return sorted(x.dim(int(d)) for d in dims)


def _reduce(call: Call, ctx: RuleContext, effect: str) -> Any:
    x = call.args["input"]
    dims = _reduced_dims(x, call.args.get("dim"))
    for d in dims:
        if effect == "uniform":
            ctx.uniform(x.terms[d], call)
        elif effect == "freeze":
            ctx.freeze(x.terms[d], f"{call.name} over this axis at {call.where()}")
    shape = out_shape(call)
    keep = [Fixed(1) if d in dims else t for d, t in enumerate(x.terms)]
    if len(shape) != len(keep):
        keep = [t for d, t in enumerate(x.terms) if d not in dims]
    return TensorValue(keep, shape)


@rules.rule("mean", signature="input, dim=None, keepdim=False, *, dtype=None")
def mean(call: Call, ctx: RuleContext) -> Any:
    return _reduce(call, ctx, "uniform")


@rules.rule(
    "sum",
    signature="input, dim=None, keepdim=False, *, dtype=None",
    names=(
        "nansum",
        "prod",
        "logsumexp",
        "count_nonzero",
        "frobenius_norm",
        "nuclear_norm",
        "argmax",
        "argmin",
        "all",
        "any",
    ),
)
def sum_(call: Call, ctx: RuleContext) -> Any:
    return _reduce(call, ctx, "freeze")


def _is_max_norm(p: Any) -> bool:
    """``p = ±inf``: the norm is the largest (smallest) ``|x|``, unchanged by replication."""
    return isinstance(p, (int, float)) and not isinstance(p, bool) and math.isinf(p)


@rules.rule(
    "norm",
    signature="input, p='fro', dim=None, keepdim=False, out=None, dtype=None",
    also={
        "linalg_vector_norm": "input, p=2, dim=None, keepdim=False, *, dtype=None, out=None",
        "linalg_norm": "input, p=None, dim=None, keepdim=False, *, out=None, dtype=None",
        "linalg_matrix_norm": "input, p='fro', dim=(-2, -1), keepdim=False, *, dtype=None, "
        "out=None",
    },
)
def norm(call: Call, ctx: RuleContext) -> Any:
    """A p-norm over some axes: ``(Σ |x_i|^p)^(1/p)`` counts a replicated unit once per replica,
    so the reduced axes are frozen. ``p = ±inf`` (``max |x_i|``) is unchanged by replication;
    a matrix norm (``'nuc'``, or a numeric ``p`` of ``linalg.norm`` over two axes) freezes."""
    x, p, dim = call.args["input"], call.args["p"], call.args["dim"]
    matrix = (
        call.name == "linalg_matrix_norm"
        or p == "nuc"
        or (
            call.name == "linalg_norm"
            and p is not None
            and (isinstance(dim, (list, tuple)) and len(dim) == 2 or (dim is None and x.ndim == 2))
        )
    )
    if call.name == "linalg_matrix_norm" and dim is None:
        call.args["dim"] = (-2, -1)
    return _reduce(call, ctx, "none" if _is_max_norm(p) and not matrix else "freeze")


@rules.rule("normalize", signature="input, p=2.0, dim=1, eps=1e-12, out=None")
def normalize(call: Call, ctx: RuleContext) -> Any:
    """``F.normalize``: ``x / max(‖x‖_p, eps)`` along ``dim``, unit by unit elsewhere. The norm
    counts replicas (see :func:`norm`), so ``dim`` is frozen unless ``p = ±inf``."""
    x = call.args["input"]
    if not _is_max_norm(call.args["p"]):
        for d in _reduced_dims(x, call.args["dim"]):
            ctx.freeze(x.terms[d], f"{call.name} over this axis at {call.where()}")
    return same_as(x, call)


@rules.rule("cumsum", signature="input, dim, *, dtype=None", names=("cumprod", "logcumsumexp"))
def cumsum(call: Call, ctx: RuleContext) -> Any:
    """A running sum along ``dim``: each position sums the ones before it, so ``dim`` is frozen
    (as for ``sum``); the other axes keep their units."""
    x = call.args["input"]
    d = x.dim(int(call.args["dim"]))
    ctx.freeze(x.terms[d], f"{call.name} along this axis at {call.where()}")
    return same_as(x, call)


@rules.rule("diff", signature="input, n=1, dim=-1, prepend=None, append=None")
def diff(call: Call, ctx: RuleContext) -> Any:
    """Differences of neighbours along ``dim`` (position ids in causal masks): ``dim`` mixes
    positions and is frozen; ``prepend``/``append`` share the other axes with the input."""
    x = call.args["input"]
    d = x.dim(int(call.args["dim"]))
    ctx.freeze(x.terms[d], f"{call.name} along this axis at {call.where()}")
    for key in ("prepend", "append"):
        other = call.args[key]
        if isinstance(other, TensorValue) and other.ndim == x.ndim:
            ctx.freeze(other.terms[d], f"{call.name} along this axis at {call.where()}")
            for i in range(x.ndim):
                if i != d and other.shape[i] == x.shape[i] != 1:
                    ctx.unify(other.terms[i], x.terms[i], call)
    shape = out_shape(call)
    return TensorValue([Fixed(shape[i]) if i == d else t for i, t in enumerate(x.terms)], shape)


@rules.rule("amax", signature="input, dim=None, keepdim=False", names=("amin",))
def amax(call: Call, ctx: RuleContext) -> Any:
    return _reduce(call, ctx, "none")


@rules.rule("max", signature="input, dim=None, keepdim=False", names=("min",))
def max_(call: Call, ctx: RuleContext) -> Any:
    x, dim = call.args["input"], call.args["dim"]
    if isinstance(dim, TensorValue):  # torch.max(a, b) is elementwise
        from .elementwise import nary

        call.args = {"args": (x, dim), "kwargs": {}}
        return nary(call, ctx)
    if dim is None:
        return _reduce(call, ctx, "none")
    # (values, indices): indices name positions along the axis, which widening renumbers.
    ctx.freeze(x.terms[x.dim(dim)], f"indices of {call.name} at {call.where()}")
    values = _reduce(call, ctx, "none")
    return (values, TensorValue(list(values.terms), values.shape))


@rules.rule(
    "var",
    signature="input, dim=None, *, correction=None, keepdim=False, unbiased=None",
    names=("std",),
)
def var(call: Call, ctx: RuleContext) -> Any:
    biased = call.args.get("correction") == 0 or call.args.get("unbiased") is False
    if isinstance(call.args.get("dim"), bool):  # x.var(False): the unbiased flag positionally
        biased = call.args["dim"] is False
        call.args["dim"] = None
    return _reduce(call, ctx, "uniform" if biased else "freeze")


@rules.rule(
    "softmax",
    signature="input, dim=None, *args, **kwargs",
    names=("log_softmax", "_softmax", "_log_softmax", "softmin"),
)
def softmax(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = call.args["dim"]
    if d is None:
        return ctx.block(call, "softmax without an explicit dim")
    ctx.freeze(x.terms[x.dim(d)], f"softmax over this axis at {call.where()}")
    return same_as(x, call)


@rules.module(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def _softmax_module(m: nn.Softmax, name: str, args: tuple, kwargs: dict):
    return "softmax", {"input": args[0], "dim": m.dim}


def _pool(spatial: int):
    def rule(call: Call, ctx: RuleContext) -> Any:
        x = call.args["input"]
        shape = out_shape(call)
        kept = x.terms[: x.ndim - spatial]
        value = TensorValue([*kept, *(Fixed(s) for s in shape[-spatial:])], shape)
        if isinstance(call.out, (list, tuple)):  # return_indices: the indices are per unit too
            return (value, TensorValue(list(value.terms), shape))
        return value

    return rule


_POOLS = (
    "max_pool",
    "avg_pool",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "lp_pool",
    "fractional_max_pool",
)
for _n in (1, 2, 3):
    rules.rule(
        f"pool{_n}d",
        signature="input, *args, **kwargs",
        names=tuple(f"{p}{_n}d" for p in _POOLS) + tuple(f"{p}{_n}d_with_indices" for p in _POOLS),
    )(_pool(_n))


def _pool_module(spatial: int):
    def adapter(m: nn.Module, name: str, args: tuple, kwargs: dict):
        return f"pool{spatial}d", {"input": args[0], "args": (), "kwargs": {}}

    return adapter


for _n, _types in {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
}.items():
    rules.module(*_types)(_pool_module(_n))


@rules.rule("topk", signature="input, k, dim=-1, largest=True, sorted=True")
def topk(call: Call, ctx: RuleContext) -> Any:
    """``(values, indices)`` of the ``k`` largest along ``dim`` (a router picking experts): the
    picks depend on every entry of that axis, so it keeps its size; ``k`` is a fixed size."""
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    ctx.freeze(x.terms[d], f"{call.name} over this axis at {call.where()}")
    shape = out_shape(call)
    values = TensorValue([Fixed(shape[d]) if i == d else t for i, t in enumerate(x.terms)], shape)
    return (values, TensorValue(list(values.terms), shape))


@rules.rule(
    "sort",
    signature="input, dim=-1, descending=False, *, stable=None",
    also={"argsort": "input, dim=-1, descending=False, *, stable=False"},
)
def sort(call: Call, ctx: RuleContext) -> Any:
    """Sorting reorders one axis by value (tokens grouped by expert): that axis keeps its
    size; the others carry their units through, in the values and the indices alike."""
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    ctx.freeze(x.terms[d], f"{call.name} over this axis at {call.where()}")
    values = same_as(x, call)
    if isinstance(call.out, (list, tuple)):
        return (values, TensorValue(list(values.terms), values.shape))
    return values


@rules.rule(
    "histc",
    signature="input, bins=100, min=0, max=0",
    also={"bincount": "input, weights=None, minlength=0"},
)
def histc(call: Call, ctx: RuleContext) -> Any:
    """A histogram counts every entry of its input (tokens per expert): the input's axes keep
    their sizes; the output's bins are a fixed size."""
    for value in tensor_values(call.args):
        for t in value.terms:
            ctx.freeze(t, f"counted by {call.name} at {call.where()}")
    return ctx.fixed_tensor(out_shape(call))
