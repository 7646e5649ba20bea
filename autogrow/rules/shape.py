"""Rules for ops that move, merge or reshape axes (views, permutes, expand, pad, sizes).

Views merge and split axes as products (``flatten`` → ``(c h w)``, heads → ``(heads head_dim)``).
The term algebra in :mod:`autogrow.axes.terms` does the work; these rules only say which axes
go where. Concatenation, split/chunk and indexing are in :mod:`autogrow.rules.slicing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..axes.terms import Fixed, Term, cat, prod
from ..tracing.trace import TracerKind
from .common import out_shape, same_as
from .context import LiteralSize
from .registry import Call, Dynamic, RuleSet, TensorValue

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


def _sizes(args: Any) -> list[Any]:
    """``view(a, b)`` and ``view((a, b))`` alike."""
    if len(args) == 1 and isinstance(args[0], (list, tuple, torch.Size)):
        return list(args[0])
    return list(args)


def _has_atoms(ctx: RuleContext, t: Term) -> bool:
    return bool(ctx.store.leaf_atoms(t))


def reshape_terms(call: Call, ctx: RuleContext, x: TensorValue, shape: tuple[int, ...]) -> Any:
    pieces = ctx.store.factor(prod(x.terms), list(shape), call.where()) if x.ndim else None
    if x.ndim == 0:
        return ctx.fixed_tensor(shape)
    if pieces is None:
        return ctx.block(
            call, f"cannot express {tuple(x.shape)} -> {shape} as a regrouping of axes"
        )
    return TensorValue(pieces, shape)


@rules.rule("view", signature="input, *shape", names=("reshape", "_unsafe_view", "_reshape_alias"))
def view(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    shape = out_shape(call)
    result = reshape_terms(call, ctx, x, shape)
    if isinstance(result, TensorValue):
        requested = _sizes(call.args["shape"])
        if len(requested) == len(shape):
            check_requested_sizes(call, ctx, result.terms, requested)
    return result


def check_requested_sizes(call: Call, ctx: RuleContext, terms: list[Term], requested: list) -> None:
    """Sizes passed to view/expand: a size read from another axis ties the two axes; a literal
    is checked when the axis would change."""
    for i, (t, s) in enumerate(zip(terms, requested)):
        if isinstance(s, Dynamic) and s.quotient is not None:
            head_size_from_width(ctx, terms, i, *s.quotient, call)
        elif isinstance(s, Dynamic) and s.term is not None and s.term.size == t.size:
            ctx.same_size(t, s.term, call)
        elif isinstance(s, int) and s not in (-1, 1) and _has_atoms(ctx, t):
            # a literal, or a size computed from other sizes (widen evaluates it)
            if not isinstance(s, Dynamic) or s.term is None:
                ctx.literal(t, s, call, index=i)


def head_size_from_width(
    ctx: RuleContext, terms: list[Term], index: int, width: Term, heads: int, call: Call
) -> bool:
    """Axis ``index`` of a view's output is sized ``width // heads`` (``C // self.num_heads``,
    ``C`` another tensor's width): a head size that follows ``width`` over a heads axis (the
    nearest axis before it of size ``heads``). Grown heads with a head size that grows as well,
    or a ``width`` that grows by another factor, would break the view, so the head size is
    frozen and ``heads × head size`` must keep ``width``'s size (whole heads follow the width;
    the planner keeps both where a factor would break that). False when no heads axis is
    found (nothing recorded)."""
    axes = [t for t in reversed(terms[:index]) if t.size == heads and _has_atoms(ctx, t)]
    if not axes:
        return False
    where = f"at {call.where()}; whole heads follow that width"
    ctx.freeze(terms[index], f"a head size: the input's width // {heads} {where}")
    ctx.literals.append(LiteralSize(prod([axes[0], terms[index]]), width, call))
    return True


@rules.rule("view_as", signature="input, other", names=("reshape_as",))
def view_as(call: Call, ctx: RuleContext) -> Any:
    x, other = call.args["input"], call.args["other"]
    result = reshape_terms(call, ctx, x, out_shape(call))
    if isinstance(result, TensorValue):
        for a, b in zip(result.terms, other.terms):
            ctx.unify(a, b, call)
    return result


@rules.rule("flatten", signature="input, start_dim=0, end_dim=-1")
def flatten(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    if x.ndim == 0:
        return ctx.fixed_tensor(out_shape(call))
    s, e = x.dim(call.args["start_dim"]), x.dim(call.args["end_dim"])
    return TensorValue([*x.terms[:s], prod(x.terms[s : e + 1]), *x.terms[e + 1 :]], out_shape(call))


@rules.module(nn.Flatten)
def _flatten_module(m: nn.Flatten, name: str, args: tuple, kwargs: dict):
    return "flatten", {"input": args[0], "start_dim": m.start_dim, "end_dim": m.end_dim}


@rules.rule("unflatten", signature="input, dim, sizes")
def unflatten(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    shape = out_shape(call)
    k = len(call.args["sizes"])
    pieces = ctx.store.factor(x.terms[d], list(shape[d : d + k]), call.where())
    if pieces is None:
        return ctx.block(call, "cannot split this axis into the requested sizes")
    return TensorValue([*x.terms[:d], *pieces, *x.terms[d + 1 :]], shape)


@rules.module(nn.Unflatten)
def _unflatten_module(m: nn.Unflatten, name: str, args: tuple, kwargs: dict):
    return "unflatten", {"input": args[0], "dim": m.dim, "sizes": m.unflattened_size}


@rules.rule("permute", signature="input, *dims")
def permute(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    dims = [x.dim(d) for d in _sizes(call.args["dims"])]
    return TensorValue([x.terms[d] for d in dims], out_shape(call))


@rules.rule("transpose", signature="input, dim0, dim1", names=("swapaxes", "swapdims"))
def transpose(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    a, b = x.dim(call.args["dim0"]), x.dim(call.args["dim1"])
    terms = list(x.terms)
    terms[a], terms[b] = terms[b], terms[a]
    return TensorValue(terms, out_shape(call))


@rules.rule("t", signature="input", names=("numpy_T",))
def t(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    return TensorValue(list(reversed(x.terms)), out_shape(call))


@rules.rule("movedim", signature="input, source, destination", names=("moveaxis",))
def movedim(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    src = call.args["source"]
    dst = call.args["destination"]
    src = [x.dim(s) for s in (src if isinstance(src, (list, tuple)) else [src])]
    dst = [x.dim(s) for s in (dst if isinstance(dst, (list, tuple)) else [dst])]
    order = [d for d in range(x.ndim) if d not in src]
    for s, d in sorted(zip(dst, src)):
        order.insert(s, d)
    return TensorValue([x.terms[d] for d in order], out_shape(call))


@rules.rule("unsqueeze", signature="input, dim")
def unsqueeze(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = call.args["dim"]
    d = d + x.ndim + 1 if d < 0 else d
    return TensorValue([*x.terms[:d], Fixed(1), *x.terms[d:]], out_shape(call))


@rules.rule("squeeze", signature="input, dim=None")
def squeeze(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    shape = out_shape(call)
    d = call.args["dim"]
    if d is None:
        drop = {i for i, s in enumerate(x.shape) if s == 1}
    else:
        dims = d if isinstance(d, (list, tuple)) else [d]
        drop = {x.dim(i) for i in dims if x.shape[x.dim(i)] == 1}
    return TensorValue([t for i, t in enumerate(x.terms) if i not in drop], shape)


@rules.rule("expand", signature="input, *size", names=("broadcast_to",))
def expand(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    shape = out_shape(call)
    requested = _sizes(call.args["size"])
    lead = len(shape) - x.ndim
    terms: list[Term] = [Fixed(s) for s in shape[:lead]]
    for d, t in enumerate(x.terms):
        terms.append(t if x.shape[d] == shape[lead + d] else Fixed(shape[lead + d]))
    check_requested_sizes(call, ctx, terms[len(terms) - len(requested) :], requested)
    return TensorValue(terms, shape)


@rules.rule("expand_as", signature="input, other")
def expand_as(call: Call, ctx: RuleContext) -> Any:
    x, other = call.args["input"], call.args["other"]
    lead = other.ndim - x.ndim
    terms = list(other.terms[:lead])
    for d, t in enumerate(x.terms):
        if x.shape[d] == other.shape[lead + d]:
            ctx.unify(t, other.terms[lead + d], call)
        terms.append(other.terms[lead + d])
    return TensorValue(terms, out_shape(call))


@rules.rule("repeat", signature="input, *repeats", names=("tile",))
def repeat(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    reps = _sizes(call.args["repeats"])
    shape = out_shape(call)
    lead = len(shape) - x.ndim
    terms: list[Term] = [Fixed(s) for s in shape[:lead]]
    for d, t in enumerate(x.terms):
        r = int(reps[len(reps) - x.ndim + d]) if len(reps) >= x.ndim - d else 1
        terms.append(prod([Fixed(r), t]))  # tiling: the whole axis, r times
    return TensorValue(terms, shape)


@rules.rule("repeat_interleave", signature="input, repeats=None, dim=None, *, output_size=None")
def repeat_interleave(call: Call, ctx: RuleContext) -> Any:
    x, r, d = call.args["input"], call.args["repeats"], call.args["dim"]
    if not isinstance(r, int) or d is None:
        return ctx.block(call, "repeat_interleave needs an int count and a dim")
    d = x.dim(d)
    terms = list(x.terms)
    terms[d] = prod([terms[d], Fixed(r)])
    return TensorValue(terms, out_shape(call))


@rules.rule("pad", signature="input, pad, mode='constant', value=None", names=("constant_pad_nd",))
def pad(call: Call, ctx: RuleContext) -> Any:
    x, widths, mode = call.args["input"], list(call.args["pad"]), call.args["mode"]
    terms = list(x.terms)
    for k in range(len(widths) // 2):
        d = x.ndim - 1 - k
        left, right = widths[2 * k], widths[2 * k + 1]
        if left == 0 and right == 0:
            continue
        if mode != "constant" or left < 0 or right < 0:
            ctx.freeze(terms[d], f"{mode} padding at {call.where()}")
            terms[d] = Fixed(out_shape(call)[d])
        else:
            terms[d] = cat([Fixed(left), terms[d], Fixed(right)])
    return TensorValue(terms, out_shape(call))


@rules.rule("roll", signature="input, shifts, dims=None", names=("flip", "rot90"))
def roll(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    dims = call.args.get("dims")
    dims = range(x.ndim) if dims is None else (dims if isinstance(dims, (list, tuple)) else [dims])
    for d in dims:
        ctx.freeze(x.terms[x.dim(d)], f"{call.name} along this axis at {call.where()}")
    return same_as(x, call)


@rules.rule(
    "new_tensor",
    signature="*args, **kwargs",
    names=(
        "empty",
        "arange",
        "rand",
        "randn",
        "randint",
        "eye",
        "tensor",
        "new_empty",
        "linspace",
        "scalar_tensor",
        "zeros_like_fixed",
    ),
)
def new_tensor(call: Call, ctx: RuleContext) -> Any:
    """Creation ops: their axes are fixed sizes (tying them to a group freezes the group)."""
    return ctx.fixed_tensor(out_shape(call))


@rules.rule(
    "constant_tensor",
    signature="*args, **kwargs",
    names=("zeros", "ones", "full", "new_zeros", "new_ones", "new_full"),
)
def constant_tensor(call: Call, ctx: RuleContext) -> Any:
    """A tensor of one value (a scan's zero initial state) holds replicas of any units, so an
    axis sized from another axis (``torch.zeros(b, x.size(1))``) carries that axis' units. In
    an exported graph every size is a number: an axis takes the units it meets where a module
    around the op holds that number in an int attribute (Mamba's ``intermediate_size``; its
    size is then checked like a view's), else it keeps its size, as a number written in code."""
    shape = out_shape(call)
    args = [a for a in call.args["args"] if not isinstance(a, TensorValue)]  # new_*: self
    if call.name.endswith("full") and args:
        args = args[:1]  # the fill value follows the size
    requested = _sizes(args) if args else _sizes(call.args["kwargs"].get("size", ()))
    if len(requested) != len(shape) or not all(isinstance(s, int) for s in requested):
        return ctx.fixed_tensor(shape)
    exported = ctx.traced.kind == TracerKind.EXPORT
    terms: list[Term] = []
    for i, (s, n) in enumerate(zip(requested, shape)):
        read = isinstance(s, Dynamic) and s.term is not None and s.term.size == n
        if n > 1 and (read or exported and _held_by_attribute(ctx, call, n)):
            terms.append(ctx.store.new_atom(n, f"{call.where()}:{i}"))
        else:
            terms.append(Fixed(n))
    check_requested_sizes(call, ctx, terms, requested)
    return TensorValue(terms, shape)


def _held_by_attribute(ctx: RuleContext, call: Call, value: int) -> bool:
    """Whether a module around ``call`` (innermost first, up to the model) holds ``value`` in
    an int attribute: a size the code may compute from it, which widen can update."""
    model, name = ctx.traced.model, call.module or ""
    while True:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return False
        if any(type(v) is int and v == value for v in vars(module).values()):
            return True
        if not name:
            return False
        name = name.rpartition(".")[0]


@rules.rule("size", signature="input, dim=None", names=("sym_size",))
def size(call: Call, ctx: RuleContext) -> Any:
    """Sizes remember the axis they were read from (see :class:`Dynamic`)."""
    x, d = call.args["input"], call.args["dim"]
    if not isinstance(x, TensorValue):
        return call.out
    if d is None:
        return tuple(Dynamic(s, t) for s, t in zip(x.shape, x.terms))
    return Dynamic(x.shape[x.dim(d)], x.terms[x.dim(d)])


@rules.rule(
    "meta",
    signature="*args, **kwargs",
    names=(
        "dim",
        "numel",
        "_assert",
        "is_floating_point",
        "is_contiguous",
        "sym_numel",
        "_assert_async",
        "_assert_scalar",
        "sym_constrain_range_for_size",
        "_check_is_size",
        "item_meta",
    ),
)
def meta(call: Call, ctx: RuleContext) -> Any:
    """Ops that read shapes or assert: no effect on units."""
    return call.out


@rules.rule("getattr", signature="obj, name")
def getattr_(call: Call, ctx: RuleContext) -> Any:
    obj, name = call.args["obj"], call.args["name"]
    if isinstance(obj, TensorValue) and name in ("T", "mT"):
        terms = list(obj.terms)
        terms[-1], terms[-2] = terms[-2], terms[-1]
        return TensorValue(terms if name == "mT" else list(reversed(obj.terms)), out_shape(call))
    if isinstance(obj, TensorValue) and name in ("data",):
        return same_as(obj, call)
    if isinstance(obj, TensorValue) and name == "shape":
        return tuple(Dynamic(s, t) for s, t in zip(obj.shape, obj.terms))
    return call.out
