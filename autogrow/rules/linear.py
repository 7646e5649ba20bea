"""Rules for ops with weights: linear, convolution, embedding, matmul.

A weight's output axis is a *copy* axis (new units copy the rows of their source unit); its
input axis is a *reduce* axis (summed against the incoming activation, so replicas divide the
weight between them).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import fx, nn

from ..axes.terms import Fixed, prod
from .common import COPY, REDUCE, TAPS, broadcast, grouped, module_at, out_shape, owner
from .registry import Call, ParamRef, RuleSet, TensorValue, target_name

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


@rules.rule("linear", signature="input, weight, bias=None")
def linear(call: Call, ctx: RuleContext) -> TensorValue:
    x, w, b = call.args["input"], call.args["weight"], call.args["bias"]
    ctx.unify(x.terms[-1], w.terms[1], call)
    ctx.role(w, 1, REDUCE, call)
    ctx.role(w, 0, COPY, call)
    if isinstance(b, TensorValue):
        ctx.unify(b.terms[0], w.terms[0], call)
        ctx.role(b, 0, COPY, call)
    mod = module_at(ctx, owner(w), nn.Linear)
    wt = w.terms
    ctx.set_attr(mod, "in_features", lambda size: size(wt[1]))
    ctx.set_attr(mod, "out_features", lambda size: size(wt[0]))
    return TensorValue([*x.terms[:-1], w.terms[0]], out_shape(call))


@rules.module(nn.Linear)
def _linear_module(m: nn.Linear, name: str, args: tuple, kwargs: dict) -> tuple[str, dict]:
    bias = ParamRef(f"{name}.bias") if m.bias is not None else None
    return "linear", {"input": args[0], "weight": ParamRef(f"{name}.weight"), "bias": bias}


@rules.rule(
    "conv",
    signature="input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1",
    names=("conv1d", "conv2d", "conv3d"),
    also={
        "convolution": "input, weight, bias, stride, padding, dilation, transposed, "
        "output_padding, groups"
    },
)
def conv(call: Call, ctx: RuleContext) -> Any:
    x, w, b, groups = (call.args[k] for k in ("input", "weight", "bias", "groups"))
    if call.args.get("transposed"):
        return ctx.block(call, "transposed convolution through aten.convolution")
    spatial = w.ndim - 2
    batched = x.ndim == spatial + 2
    c_in = x.terms[1 if batched else 0]
    mod = module_at(ctx, owner(w), nn.modules.conv._ConvNd)
    if groups > 1 and groups == c_in.size:
        # Depthwise: output unit j reads only input unit j // multiplier, so the mapping of the
        # input passes through (times a fixed multiplier).
        mult = w.shape[0] // groups
        out_term = prod([c_in, Fixed(mult)])
        ctx.unify(w.terms[0], out_term, call)
        if mod is not None:
            ctx.set_attr(mod, "groups", lambda size: size(c_in))
        else:  # F.conv2d(x, self.filt, groups=self.channels): the size forward code passes
            ctx.literal(c_in, groups, call)
    else:
        inner_in = grouped(ctx, c_in, groups, call)
        inner_out = grouped(ctx, w.terms[0], groups, call)
        if inner_in is None or inner_out is None:
            return ctx.block(call, f"channels not divisible into {groups} groups")
        ctx.unify(inner_in, w.terms[1], call)
        ctx.role(w, 1, REDUCE, call)
    ctx.role(w, 0, COPY, call)
    _taps_and_bias(ctx, w, b, 0, call)
    wt = w.terms
    ctx.set_attr(mod, "in_channels", lambda size: size(c_in))
    ctx.set_attr(mod, "out_channels", lambda size: size(wt[0]))
    shape = out_shape(call)
    lead = [x.terms[0]] if batched else []
    return TensorValue([*lead, w.terms[0], *(Fixed(s) for s in shape[-spatial:])], shape)


def _taps_and_bias(ctx: RuleContext, w: TensorValue, b: Any, out_dim: int, call: Call) -> None:
    """A convolution's kernel axes carry no units; its bias follows the output channels."""
    for d in range(2, w.ndim):
        ctx.role(w, d, TAPS, call)
    if isinstance(b, TensorValue):
        ctx.unify(b.terms[0], w.terms[out_dim], call)
        ctx.role(b, 0, COPY, call)


@rules.module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_module(m: nn.modules.conv._ConvNd, name: str, args: tuple, kwargs: dict):
    bias = ParamRef(f"{name}.bias") if m.bias is not None else None
    return "conv", {
        "input": args[0],
        "weight": ParamRef(f"{name}.weight"),
        "bias": bias,
        "groups": m.groups,
    }


@rules.rule(
    "conv_transpose",
    signature="input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, "
    "dilation=1",
    names=("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
)
def conv_transpose(call: Call, ctx: RuleContext) -> Any:
    x, w, b, groups = (call.args[k] for k in ("input", "weight", "bias", "groups"))
    if groups != 1:
        return ctx.block(call, "grouped transposed convolution")
    spatial = w.ndim - 2
    batched = x.ndim == spatial + 2
    c_in = x.terms[1 if batched else 0]
    ctx.unify(c_in, w.terms[0], call)
    ctx.role(w, 0, REDUCE, call)
    ctx.role(w, 1, COPY, call)
    _taps_and_bias(ctx, w, b, 1, call)
    mod = module_at(ctx, owner(w), nn.modules.conv._ConvTransposeNd)
    wt = w.terms
    ctx.set_attr(mod, "in_channels", lambda size: size(wt[0]))
    ctx.set_attr(mod, "out_channels", lambda size: size(wt[1]))
    shape = out_shape(call)
    lead = [x.terms[0]] if batched else []
    return TensorValue([*lead, w.terms[1], *(Fixed(s) for s in shape[-spatial:])], shape)


@rules.module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose_module(m, name: str, args: tuple, kwargs: dict):
    if len(args) > 1 or kwargs:
        return "conv_transpose_output_size", {"input": args[0]}  # output_size: no rule
    bias = ParamRef(f"{name}.bias") if m.bias is not None else None
    return "conv_transpose", {
        "input": args[0],
        "weight": ParamRef(f"{name}.weight"),
        "bias": bias,
        "groups": m.groups,
    }


@rules.rule(
    "embedding",
    signature="input, weight, padding_idx=None, max_norm=None, norm_type=2.0, "
    "scale_grad_by_freq=False, sparse=False",
    also={
        "embedding": "weight, input, padding_idx=-1, scale_grad_by_freq=False, sparse=False",
        F.embedding: "input, weight, padding_idx=None, max_norm=None, norm_type=2.0, "
        "scale_grad_by_freq=False, sparse=False",
    },
)
def embedding(call: Call, ctx: RuleContext) -> Any:
    ids, w = call.args["input"], call.args["weight"]
    if call.args.get("max_norm") is not None:
        return ctx.block(call, "max_norm renormalises rows by their norm")
    ctx.freeze(w.terms[0], f"vocabulary of {call.where()}")
    ctx.role(w, 1, COPY, call)
    mod = module_at(ctx, owner(w), nn.Embedding)
    wt = w.terms
    ctx.set_attr(mod, "embedding_dim", lambda size: size(wt[1]))
    return TensorValue([*ids.terms, w.terms[1]], out_shape(call))


@rules.module(nn.Embedding)
def _embedding_module(m: nn.Embedding, name: str, args: tuple, kwargs: dict):
    return "embedding", {
        "input": args[0],
        "weight": ParamRef(f"{name}.weight"),
        "max_norm": m.max_norm,
    }


@rules.rule("matmul", signature="input, other", names=("bmm", "mm"))
def matmul(call: Call, ctx: RuleContext) -> Any:
    a, b = call.args["input"], call.args["other"]
    if a.ndim < 2 or b.ndim < 2:
        return ctx.block(call, "matmul with a 1-D operand")
    ctx.unify(a.terms[-1], b.terms[-2], call)
    # The contraction can be compensated only by dividing a parameter's reduce axis; a
    # parameter seen through a transpose (``x @ self.weight.T``) counts as one.
    pb, pa = _param_view(ctx, call, 1, "other", b), _param_view(ctx, call, 0, "input", a)
    if pb is not None:
        param, axes = pb
        ctx.role(param, axes[b.ndim - 2], REDUCE, call)
        ctx.role(param, axes[b.ndim - 1], COPY, call)
    elif pa is not None:
        param, axes = pa
        ctx.role(param, axes[a.ndim - 1], REDUCE, call)
        ctx.role(param, axes[a.ndim - 2], COPY, call)
    else:
        ctx.freeze(
            a.terms[-1],
            f"contraction of two activations at {call.where()} (in attention, the head size: "
            "autogrow grows whole heads, never the query·key size, which also sets the scale)",
        )
    shape = out_shape(call)
    batch = shape[:-2]
    lead_a = TensorValue(a.terms[:-2], a.shape[:-2])
    lead_b = TensorValue(b.terms[:-2], b.shape[:-2])
    lead = broadcast(call, ctx, [lead_a, lead_b], batch).terms if batch else []
    return TensorValue([*lead, a.terms[-2], b.terms[-1]], shape)


_TRANSPOSES = {"t", "numpy_T", "transpose", "swapaxes", "permute", "getattr"}


def _param_view(
    ctx: RuleContext, call: Call, index: int, name: str, value: TensorValue
) -> tuple[TensorValue, list[int]] | None:
    """The parameter an operand is, possibly seen through transposes and permutes, with the
    parameter axis behind each axis of the operand; None for any other operand."""
    if value.param is not None:
        return value, list(range(value.ndim))
    node = call.node
    node = node.args[index] if len(node.args) > index else node.kwargs.get(name)
    steps: list[list[int]] = []  # outermost first: operand axis i is input axis step[i]
    for _ in range(4):
        if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
            return None
        if target_name(node.target) not in _TRANSPOSES or not isinstance(node.args[0], fx.Node):
            return None
        source = ctx.values.get(node.args[0])
        if not isinstance(source, TensorValue):
            return None
        step = _permutation(node, source.ndim)
        if step is None:
            return None
        steps.append(step)
        if source.param is not None:
            axes = list(range(source.ndim))
            for step in steps:
                axes = [step[a] for a in axes]
            return source, axes
        node = node.args[0]
    return None


def _permutation(node: fx.Node, ndim: int) -> list[int] | None:
    """Axis ``i`` of a transposing op's output is axis ``perm[i]`` of its input."""
    name, args = target_name(node.target), node.args[1:]
    perm = list(range(ndim))
    if name in ("t", "numpy_T") or (name == "getattr" and args == ("T",)):
        return perm[::-1]
    if name == "getattr" and args == ("mT",) and ndim >= 2:
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return perm
    if name in ("transpose", "swapaxes") and len(args) == 2:
        if not all(isinstance(d, int) for d in args):
            return None
        i, j = (d % ndim for d in args)
        perm[i], perm[j] = perm[j], perm[i]
        return perm
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        if len(dims) != ndim or not all(isinstance(d, int) for d in dims):
            return None
        return [d % ndim for d in dims]
    return None


@rules.rule(
    "grouped_mm",
    signature="input, weight, offs=None, bias=None, out_dtype=None",
    names=("_grouped_mm", "grouped_mm_fallback"),
)
def grouped_mm(call: Call, ctx: RuleContext) -> Any:
    """One matmul per expert (mixture-of-experts layers): ``input [S, K] @ weight[e] [K, N]``
    for the rows ``offs`` gives expert ``e``, or ``[E, M, K] @ [E, K, N]`` without offsets.

    The weight is a stack of per-expert matrices (a 3-D parameter, often seen through a
    transpose); its expert axis indexes whole matrices, so it carries no units (TAPS), while
    its contraction and output axes are ordinary reduce and copy axes shared by every expert.
    """
    x, w, b = call.args["input"], call.args["weight"], call.args["bias"]
    if w.ndim != 3 or x.ndim not in (2, 3):
        return ctx.block(call, f"grouped_mm of a {x.ndim}-D input and a {w.ndim}-D weight")
    ctx.unify(x.terms[-1], w.terms[-2], call)
    view = _param_view(ctx, call, 1, "weight", w)
    if view is not None:
        param, axes = view
        ctx.role(param, axes[0], TAPS, call)
        ctx.role(param, axes[1], REDUCE, call)
        ctx.role(param, axes[2], COPY, call)
    else:
        ctx.freeze(x.terms[-1], f"contraction of two activations at {call.where()}")
        ctx.freeze(w.terms[0], f"experts of {call.where()}")
    if isinstance(b, TensorValue):
        ctx.unify(b.terms[-1], w.terms[-1], call)
        ctx.role(b, b.ndim - 1, COPY, call)
        if b.ndim == 2:
            ctx.role(b, 0, TAPS, call)
    if x.ndim == 3:  # batched: the input's expert axis meets the weight's
        ctx.unify(x.terms[0], w.terms[0], call)
    return TensorValue([*x.terms[:-1], w.terms[-1]], out_shape(call))


@rules.rule("addmm", signature="input, mat1, mat2, *, beta=1, alpha=1", names=("baddbmm",))
def addmm(call: Call, ctx: RuleContext) -> Any:
    """``input + mat1 @ mat2`` (GPT-2's Conv1D lowers to it): a matmul plus a broadcast bias."""
    mm = dataclasses.replace(call, args={"input": call.args["mat1"], "other": call.args["mat2"]})
    product = matmul(mm, ctx)
    bias = call.args["input"]
    if not isinstance(bias, TensorValue):
        return product
    if bias.param is None:
        _added_activation_keeps(call, ctx, product, bias)
    return broadcast(call, ctx, [product, bias])


def _added_activation_keeps(
    call: Call, ctx: RuleContext, product: TensorValue, bias: TensorValue
) -> None:
    """A tensor computed in forward added to the product (ALiBi's position bias, built per
    head from the head count) keeps each axis it meets where it has no units of its own:
    the product's axis cannot grow there, and the reason says what holds it."""
    nd = product.ndim
    for j in range(nd):
        k = bias.ndim - nd + j
        if k < 0 or bias.shape[k] != product.shape[j] or product.shape[j] == 1:
            continue
        free = [a for a in ctx.store.leaf_atoms(bias.terms[k]) if not ctx.store.info(a).frozen]
        if not free and ctx.store.leaf_atoms(product.terms[j]):
            ctx.freeze(
                product.terms[j],
                f"a tensor computed in forward (not a parameter) is added per position of "
                f"this axis at {call.where()}: its values depend on the size (ALiBi's per-head "
                "slopes do), so the axis keeps it",
            )


@rules.rule("einsum", signature="equation, *operands")
def einsum(call: Call, ctx: RuleContext) -> Any:
    """Axes sharing a letter carry the same units; a summed letter needs a parameter operand
    whose axis can take the division, otherwise it is frozen."""
    equation = call.args["equation"].replace(" ", "")
    ops = call.args["operands"]
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = ops[0]
    if "..." in equation or "->" not in equation:
        return ctx.block(call, "einsum with an ellipsis or an implicit output")
    inputs, output = equation.split("->")
    specs = inputs.split(",")
    if len(specs) != len(ops):
        return ctx.block(call, "einsum operand count does not match the equation")
    by_letter: dict[str, list[tuple[TensorValue, int]]] = {}
    for spec, op in zip(specs, ops):
        for d, letter in enumerate(spec):
            if op.shape[d] != 1:
                by_letter.setdefault(letter, []).append((op, d))
    for letter, uses in by_letter.items():
        first = uses[0][0].terms[uses[0][1]]
        for op, d in uses[1:]:
            ctx.unify(first, op.terms[d], call)
        summed = letter not in output
        params = [(op, d) for op, d in uses if op.param is not None]
        if summed and len(ops) > 1:
            if len(params) == 1:
                ctx.role(params[0][0], params[0][1], REDUCE, call)
            else:
                ctx.freeze(first, f"einsum contraction over '{letter}' at {call.where()}")
        elif summed:
            ctx.freeze(first, f"einsum sum over '{letter}' at {call.where()}")
        for op, d in params:
            if not (summed and len(params) == 1):
                ctx.role(op, d, COPY, call)
    shape = out_shape(call)
    terms = [
        by_letter[letter][0][0].terms[by_letter[letter][0][1]] if letter in by_letter else Fixed(s)
        for letter, s in zip(output, shape)
    ]
    return TensorValue(terms, shape)
