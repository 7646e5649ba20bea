"""Rules for normalisations.

BatchNorm and InstanceNorm keep per-channel statistics: their parameters and buffers are copied.
LayerNorm, GroupNorm and RMSNorm average over the widened axis, so that axis must be replicated
uniformly (every unit the same number of times) for the mean and variance to stay the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import nn

from .common import COPY, grouped, module_at, out_shape, owner, same_as
from .registry import Call, ParamRef, RuleSet, TensorValue

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


def _per_channel(call: Call, ctx: RuleContext, channel: Any, names: tuple[str, ...]) -> None:
    for key in names:
        p = call.args.get(key)
        if isinstance(p, TensorValue):
            ctx.unify(p.terms[0], channel, call)
            ctx.role(p, 0, COPY, call)


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _refs(m: nn.Module, name: str, keys: tuple[str, ...]) -> dict[str, ParamRef | None]:
    """The module's optional tensors as ParamRefs (None where the module has none)."""
    return {k: ParamRef(f"{name}.{k}") if getattr(m, k, None) is not None else None for k in keys}


def _norm_module(ctx: RuleContext, call: Call, kinds: type | tuple[type, ...]) -> str | None:
    """The norm module whose size attributes this call fixes: the called module, or the owner
    of its weight when called functionally."""
    name = call.module if call.module_obj is not None else _owner(call)
    return module_at(ctx, name, kinds)


@rules.rule(
    "batch_norm",
    signature="input, weight=None, bias=None, running_mean=None, running_var=None, "
    "training=False, momentum=0.1, eps=1e-5, cudnn_enabled=True",
    names=("_native_batch_norm_legit_no_training",),
    also={
        F.batch_norm: "input, running_mean, running_var, weight=None, bias=None, "
        "training=False, momentum=0.1, eps=1e-05",
        "instance_norm": "input, weight=None, bias=None, running_mean=None, running_var=None, "
        "use_input_stats=True, momentum=0.1, eps=1e-5, cudnn_enabled=True",
        F.instance_norm: "input, running_mean=None, running_var=None, weight=None, bias=None, "
        "use_input_stats=True, momentum=0.1, eps=1e-05",
    },
)
def batch_norm(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    channel = x.terms[1] if x.ndim > 1 else x.terms[0]
    _per_channel(call, ctx, channel, _BN_TENSORS)
    mod = _norm_module(ctx, call, _RUNNING_STAT_NORMS)
    ctx.set_attr(mod, "num_features", lambda size: size(channel))
    if call.name == "_native_batch_norm_legit_no_training":
        return (same_as(x, call), ctx.fixed_tensor((0,)), ctx.fixed_tensor((0,)))
    return same_as(x, call)


_RUNNING_STAT_NORMS = (nn.modules.batchnorm._NormBase,)  # batch and instance norms


def _owner(call: Call) -> str | None:
    for key in _BN_TENSORS:
        o = owner(call.args.get(key))
        if o is not None:
            return o
    return None


@rules.module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def _bn_module(m: nn.modules.batchnorm._BatchNorm, name: str, args: tuple, kwargs: dict):
    return "batch_norm", {"input": args[0], **_refs(m, name, _BN_TENSORS)}


@rules.module(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def _in_module(m: nn.modules.instancenorm._InstanceNorm, name: str, args: tuple, kwargs: dict):
    return "batch_norm", {"input": args[0], **_refs(m, name, _BN_TENSORS)}


@rules.rule(
    "layer_norm",
    signature="input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True",
    also={"rms_norm": "input, normalized_shape, weight=None, eps=None"},
)
def layer_norm(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    k = len(call.args["normalized_shape"])
    normalized = x.terms[x.ndim - k :]
    for t in normalized:
        ctx.uniform(t, call)
    for key in ("weight", "bias"):
        p = call.args.get(key)
        if isinstance(p, TensorValue):
            for d, t in enumerate(normalized):
                ctx.unify(p.terms[d], t, call)
                ctx.role(p, d, COPY, call)
    mod = _norm_module(ctx, call, (nn.LayerNorm, nn.RMSNorm))
    ctx.set_attr(mod, "normalized_shape", lambda size: tuple(size(t) for t in normalized))
    return same_as(x, call)


@rules.module(nn.LayerNorm)
def _ln_module(m: nn.LayerNorm, name: str, args: tuple, kwargs: dict):
    return "layer_norm", {
        "input": args[0],
        "normalized_shape": m.normalized_shape,
        **_refs(m, name, ("weight", "bias")),
    }


@rules.module(nn.RMSNorm)
def _rms_module(m: nn.RMSNorm, name: str, args: tuple, kwargs: dict):
    return "layer_norm", {
        "input": args[0],
        "normalized_shape": m.normalized_shape,
        **_refs(m, name, ("weight",)),
    }


@rules.rule(
    "group_norm",
    signature="input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True",
)
def group_norm(call: Call, ctx: RuleContext) -> Any:
    x, groups = call.args["input"], call.args["num_groups"]
    channel = x.terms[1]
    inner = grouped(ctx, channel, groups, call)
    if inner is None:
        return ctx.block(call, f"channels not divisible into {groups} groups")
    ctx.uniform(inner, call)
    _per_channel(call, ctx, channel, ("weight", "bias"))
    mod = _norm_module(ctx, call, nn.GroupNorm)
    ctx.set_attr(mod, "num_channels", lambda size: size(channel))
    return same_as(x, call)


@rules.module(nn.GroupNorm)
def _gn_module(m: nn.GroupNorm, name: str, args: tuple, kwargs: dict):
    return "group_norm", {
        "input": args[0],
        "num_groups": m.num_groups,
        **_refs(m, name, ("weight", "bias")),
    }


@rules.rule("weight_norm", signature="v, g, dim=0", names=("_weight_norm",))
def weight_norm(call: Call, ctx: RuleContext) -> Any:
    """``w = g · v / ‖v‖`` (``nn.utils.parametrizations.weight_norm``; the norm over every axis
    but ``dim``). The weight is ``v`` as the layer using it sees it: ``v`` grows as that
    layer's weight would, and widen then rescales ``g`` by ``‖v'‖ / ‖v‖`` per slice of
    ``dim`` (:func:`autogrow.transforms.axis_maps.rescale_weight_norms`), which keeps ``w``
    the grown weight exactly. ``dim``'s axis keeps its size (``g`` holds one scale per slice)."""
    v, g = call.args["v"], call.args["g"]
    d = v.dim(call.args["dim"])
    if v.param is None or g.param is None or g.ndim != v.ndim:
        return ctx.block(call, "weight norm of a tensor that is not a parameter")
    ctx.unify(g.terms[d], v.terms[d], call)
    ctx.freeze(v.terms[d], f"the axis weight norm keeps (one g per slice) at {call.where()}")
    ctx.role(g, d, COPY, call)
    return TensorValue(list(v.terms), out_shape(call), v.param)
