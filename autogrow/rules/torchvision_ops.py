"""Rules for torchvision's ``torch.fx.wrap``-ped functions, which symbolic tracing sees as
single calls: Swin's window attention, its relative position bias and patch merging.

Bound by qualified name: importing this module does not import torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..axes.terms import Fixed, cat
from .common import COPY, REDUCE
from .registry import Call, RuleSet, TensorValue

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


def shifted_window_attention(call: Call, ctx: RuleContext) -> Any:
    """Swin (v1 and v2) attention: channels = heads × head_dim; widen by whole heads."""
    a = call.args
    x, w_qkv, w_proj = a["input"], a["qkv_weight"], a["proj_weight"]
    heads = a["num_heads"]
    c = x.terms[-1]
    pieces = ctx.store.factor(c, [heads, x.shape[-1] // heads], call.where())
    qkv_rows = ctx.store.factor(w_qkv.terms[0], [3, x.shape[-1]], call.where())
    if pieces is None or qkv_rows is None:
        return ctx.block(call, "cannot lay out the channels as heads × head_dim")
    head, head_dim = pieces
    ctx.freeze(head_dim, f"head_dim at {call.where()}")
    ctx.unify(qkv_rows[0], Fixed(3), call)
    ctx.unify(qkv_rows[1], c, call)
    ctx.unify(w_qkv.terms[1], c, call)
    ctx.unify(w_proj.terms[0], c, call)
    ctx.unify(w_proj.terms[1], c, call)
    for w in (w_qkv, w_proj):
        ctx.role(w, 0, COPY, call)
        ctx.role(w, 1, REDUCE, call)
    for key, rows in (("qkv_bias", w_qkv.terms[0]), ("proj_bias", c)):
        b = a.get(key)
        if isinstance(b, TensorValue):
            ctx.unify(b.terms[0], rows, call)
            ctx.role(b, 0, COPY, call)
    bias = a["relative_position_bias"]
    if isinstance(bias, TensorValue):
        ctx.unify(bias.terms[1], head, call)
        ctx.role(bias, 1, COPY, call)
    scale = a.get("logit_scale")
    if isinstance(scale, TensorValue):
        ctx.unify(scale.terms[0], head, call)
        ctx.role(scale, 0, COPY, call)
    ctx.set_attr(call.module, "num_heads", lambda size: size(head))
    return TensorValue(list(x.terms), x.shape)


def relative_position_bias(call: Call, ctx: RuleContext) -> Any:
    """(table[index] → 1 × heads × N × N): the table's rows are positions, its columns heads."""
    table = call.args["relative_position_bias_table"]
    ctx.freeze(table.terms[0], f"relative positions at {call.where()}")
    ctx.role(table, 1, COPY, call)
    shape = call.out.shape
    return TensorValue([Fixed(1), table.terms[1], Fixed(shape[2]), Fixed(shape[3])], shape)


def patch_merging_pad(call: Call, ctx: RuleContext) -> Any:
    """Four spatial phases side by side along channels: ``[c | c | c | c]``."""
    x = call.args["x"]
    shape = call.out.shape
    c = x.terms[-1]
    spatial = [Fixed(s) for s in shape[-3:-1]]
    return TensorValue([*x.terms[:-3], *spatial, cat([c, c, c, c])], shape)


# Bound by qualified name, so torchvision is never imported here: the rules apply when a traced
# model calls these functions, and cost nothing for models that do not.
_SWIN = "torchvision.models.swin_transformer."
rules.rule(
    "tv_shifted_window_attention",
    signature="input, qkv_weight, proj_weight, relative_position_bias, window_size, "
    "num_heads, shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, "
    "proj_bias=None, logit_scale=None, training=True",
    names=(_SWIN + "shifted_window_attention",),
)(shifted_window_attention)
rules.rule(
    "tv_relative_position_bias",
    signature="relative_position_bias_table, relative_position_index, window_size",
    names=(_SWIN + "_get_relative_position_bias",),
)(relative_position_bias)
rules.rule("tv_patch_merging_pad", signature="x", names=(_SWIN + "_patch_merging_pad",))(
    patch_merging_pad
)
