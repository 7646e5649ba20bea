"""Rules for attention: widen by whole heads, never change head_dim.

Replicating a head replicates its whole output, and the out-projection divides it, so the
function is exact; head_dim is contracted between queries and keys (and sets the 1/sqrt(d)
scale), so it stays fixed. The sequence axis is what softmax normalises over: fixed too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..axes.terms import Fixed, Term
from .common import COPY, REDUCE, broadcast, out_shape
from .registry import Call, RuleSet, TensorValue

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


@rules.rule(
    "scaled_dot_product_attention",
    signature="query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, "
    "enable_gqa=False",
)
def sdpa(call: Call, ctx: RuleContext) -> Any:
    q, k, v = call.args["query"], call.args["key"], call.args["value"]
    try:
        # the leading (batch, head) axes broadcast: multi-query attention passes key and value
        # with one head (size 1) that every query head reads; only the query's heads then grow
        batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except RuntimeError:
        batch = None
    if batch is None:
        return ctx.block(
            call, "query/key/value with head counts that do not broadcast (grouped-query)"
        )
    ctx.unify(q.terms[-1], k.terms[-1], call)
    ctx.freeze(q.terms[-1], f"head_dim (query·key contraction) at {call.where()}")
    ctx.unify(k.terms[-2], v.terms[-2], call)
    ctx.freeze(k.terms[-2], f"attended sequence (softmax axis) at {call.where()}")
    lead = broadcast(call, ctx, [_lead(q), _lead(k), _lead(v)], batch).terms
    ctx.attention_axes(lead[-1] if lead else Fixed(1), q.terms[-1], v.terms[-1], call)
    mask = call.args.get("attn_mask")
    if isinstance(mask, TensorValue):
        full = TensorValue([*lead, q.terms[-2], k.terms[-2]], (*batch, q.shape[-2], k.shape[-2]))
        broadcast(call, ctx, [full, mask], full.shape)
    return TensorValue([*lead, q.terms[-2], v.terms[-1]], out_shape(call))


def _lead(x: TensorValue) -> TensorValue:
    return TensorValue(x.terms[:-2], x.shape[:-2], x.param)


@rules.rule(
    "multi_head_attention",
    signature="query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, "
    "average_attn_weights=True, is_causal=False, module=None",
)
def multi_head_attention(call: Call, ctx: RuleContext) -> Any:
    """``nn.MultiheadAttention`` as a leaf.

    Its embed_dim is both the model width and heads × head_dim, so the two are one axis.
    """
    m: nn.MultiheadAttention = call.args["module"]
    q, k, v = call.args["query"], call.args["key"], call.args["value"]
    axes = _mha_parameters(m, call.module or "", call, ctx)
    if isinstance(axes, str):
        return ctx.block(call, axes)
    embed, heads = axes
    for x in (q, k, v):
        ctx.unify(x.terms[-1], embed, call)
    out = call.out
    attn = TensorValue([*q.terms[:-1], embed], out[0].shape)
    weights = out[1]
    if call.args["need_weights"] and call.args["average_attn_weights"]:
        ctx.uniform(heads, call)  # the returned weights are a mean over heads
    if weights is not None:
        weights = ctx.frozen_tensor(weights, f"attention weights of {call.module}")
    return (attn, weights)


@rules.constraint(nn.MultiheadAttention)
def _mha_traced_through(m: nn.MultiheadAttention, name: str, ctx: RuleContext) -> None:
    """``nn.MultiheadAttention`` whose forward the tracer went through (torch.export, or a
    parent module fx could not record): the decomposed ops see in_proj rows and out_proj
    columns as any linear's, but the module's forward (and torch's fused fast path) reads
    embed_dim, num_heads and head_dim from attributes and requires in_proj to be q, k, v of
    embed_dim rows each. The same ties and attribute bindings as the leaf rule keep the
    decomposed graph and those attributes one width."""
    params = {p: ctx.param(f"{name}.{p}" if name else p) for p, _ in m.named_parameters()}
    call = Call(type(m).__name__, None, params, None, module=name or None)
    axes = _mha_parameters(m, name, call, ctx, lay_out_rows=False)
    if isinstance(axes, str):
        ctx.block(call, axes)


def _mha_parameters(
    m: nn.MultiheadAttention, name: str, call: Call, ctx: RuleContext, lay_out_rows: bool = True
) -> tuple[Term, Term] | str:
    """Tie an ``nn.MultiheadAttention``'s parameters and bind its size attributes; returns its
    (embedding, heads) axes, or why it cannot widen. Heads grow, head_dim stays: head_dim is
    the query·key contraction and sets the 1/sqrt(head_dim) scale.

    ``lay_out_rows``: state in_proj's rows as 3 × embedding. A leaf call must; a decomposed
    forward already laid them out by its own ops (3 × E for self-attention, E | 2 × E when
    the query is not the key), and a second, different layout would contradict it; there
    tying out_proj's input to the embedding is what the ops do not say."""
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        return "MultiheadAttention with kdim/vdim, bias_k or add_zero_attn"
    prefix = f"{name}." if name else ""
    w_in = ctx.param(f"{prefix}in_proj_weight")
    w_out = ctx.param(f"{prefix}out_proj.weight")
    embed = w_in.terms[1]
    # in_proj rows are (3 × heads × head_dim); the module forward requires heads × head_dim
    # to equal the embedding width, so the two are one axis.
    if lay_out_rows:
        pieces = ctx.store.factor(w_in.terms[0], [3, m.embed_dim], call.where())
        if pieces is None:
            return "cannot lay out in_proj as 3 × heads × head_dim"
        ctx.unify(pieces[0], Fixed(3), call)
        ctx.unify(pieces[1], embed, call)
    head_axis = ctx.store.factor(embed, [m.num_heads, m.head_dim], call.where())
    if head_axis is None:
        return "cannot lay out the embedding as heads × head_dim"
    ctx.freeze(head_axis[1], f"head_dim of {name or 'the model'}")
    ctx.role(w_in, 0, COPY, call)
    ctx.role(w_in, 1, REDUCE, call)
    ctx.unify(w_out.terms[0], embed, call)
    ctx.unify(w_out.terms[1], embed, call)
    ctx.role(w_out, 0, COPY, call)
    ctx.role(w_out, 1, REDUCE, call)
    for bias in (f"{prefix}in_proj_bias", f"{prefix}out_proj.bias"):
        if _has(ctx, bias):
            b = ctx.param(bias)
            ctx.unify(b.terms[0], w_in.terms[0] if "in_proj" in bias else embed, call)
            ctx.role(b, 0, COPY, call)
    module = name
    head_dim = m.head_dim
    for attr in ("embed_dim", "kdim", "vdim"):
        ctx.set_attr(module, attr, lambda size: size(embed))
    ctx.set_attr(module, "num_heads", lambda size: size(embed) // head_dim)
    ctx.set_attr(module, "head_dim", lambda size: head_dim)
    ctx.set_attr(f"{prefix}out_proj", "in_features", lambda size: size(embed))
    ctx.set_attr(f"{prefix}out_proj", "out_features", lambda size: size(embed))
    return embed, head_axis[0]


def _has(ctx: RuleContext, qualname: str) -> bool:
    return qualname in dict(ctx.traced.model.named_parameters())


@rules.module(nn.MultiheadAttention)
def _mha_module(m: nn.MultiheadAttention, name: str, args: tuple, kwargs: dict):
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")  # fmt: skip
    bound = dict(zip(names, args))
    bound.update(kwargs)
    bound.setdefault("need_weights", True)
    bound.setdefault("average_attn_weights", True)
    return "multi_head_attention", {**bound, "module": m}
