"""Rules for ops that lay axes side by side or cut and pick from them: ``cat``, ``stack``,
``split``/``chunk``/``unbind``, indexing and slicing.

Concatenation makes a ``Cat`` of the parts; split/chunk cut an axis at fixed sizes (a literal
size that widening would change is recorded, see :meth:`RuleContext.literal`); indexing picks
positions from an axis, which only ``Fixed`` axes or whole parts of a ``Cat`` allow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..axes.terms import Fixed, Term, cat
from ..tracing.trace import TracerKind
from .common import out_shape
from .registry import Call, Dynamic, RuleSet, TensorValue
from .shape import _has_atoms

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry


@rules.rule("cat", signature="tensors, dim=0", names=("concat", "concatenate"))
def cat_(call: Call, ctx: RuleContext) -> Any:
    parts = [v for v in call.args["tensors"] if isinstance(v, TensorValue) and v.shape != (0,)]
    shape = out_shape(call)
    d = call.args["dim"]
    d = d + len(shape) if d < 0 else d
    terms: list[Term] = []
    for i in range(len(shape)):
        if i == d:
            terms.append(cat(p.terms[d] for p in parts))
            continue
        for p in parts[1:]:
            ctx.unify(parts[0].terms[i], p.terms[i], call)
        terms.append(parts[0].terms[i])
    return TensorValue(terms, shape)


@rules.rule("stack", signature="tensors, dim=0")
def stack(call: Call, ctx: RuleContext) -> Any:
    parts = call.args["tensors"]
    shape = out_shape(call)
    d = call.args["dim"]
    d = d + len(shape) if d < 0 else d
    for p in parts[1:]:
        for a, b in zip(parts[0].terms, p.terms):
            ctx.unify(a, b, call)
    terms = list(parts[0].terms)
    terms.insert(d, Fixed(len(parts)))
    return TensorValue(terms, shape)


def _split(call: Call, ctx: RuleContext, x: TensorValue, d: int, literal: Any) -> Any:
    sizes = [m.shape[d] for m in call.out]
    pieces = ctx.store.split(x.terms[d], sizes, call.where())
    if pieces is None:
        return ctx.block(call, "cannot cut this axis into the requested pieces")
    if isinstance(literal, int) and not isinstance(literal, Dynamic):
        # split(x, 64): the piece size is fixed in code, so pieces keep their size.
        for p in pieces:
            if _has_atoms(ctx, p):
                ctx.literal(p, p.size, call, index=0)
    elif isinstance(literal, (list, tuple)):
        for i, (p, s) in enumerate(zip(pieces, literal)):
            if _has_atoms(ctx, p):
                ctx.literal(p, s, call, index=i)
    elif any(p.size != pieces[0].size for p in pieces):
        # chunk(x, n) of an axis n does not divide: the piece size is ceil(size / n), which
        # pieces grown by the same factor do not keep (30, 30, 28 -> 60, 60, 56, but chunk
        # cuts 176 into 59, 59, 58). Only the sizes as they are fit: freeze the pieces.
        for p in pieces:
            ctx.freeze(p, f"uneven chunks {sizes} at {call.where()}")
    else:
        # chunk(x, n): pieces must stay of equal size; tying them is the simple sufficient way.
        for p in pieces[1:]:
            ctx.unify(pieces[0], p, call)
    out = []
    for p, m in zip(pieces, call.out):
        terms = list(x.terms)
        terms[d] = p
        # A piece of a parameter (a fused q|kv projection cut in two) is still that
        # parameter: its other axes are the parameter's own, so how an op uses them (a
        # linear reducing over the input axis) is a role of the parameter, not a contraction
        # over an activation that would have to freeze.
        out.append(TensorValue(terms, m.shape, x.param))
    return tuple(out)


@rules.rule(
    "split",
    signature="input, split_size_or_sections, dim=0",
    names=("split_with_sizes",),
    also={"split_with_sizes": "input, split_sizes, dim=0"},
)
def split(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    literal = call.args.get("split_size_or_sections", call.args.get("split_sizes"))
    if ctx.traced.kind == TracerKind.EXPORT and isinstance(literal, int):
        literal = None  # export specialises every size; chunk() arrives here as split
    return _split(call, ctx, x, d, literal)


@rules.rule("chunk", signature="input, chunks, dim=0", names=("tensor_split",))
def chunk(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    return _split(call, ctx, x, x.dim(call.args["dim"]), None)


@rules.rule("unbind", signature="input, dim=0")
def unbind(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    ctx.freeze(x.terms[d], f"unbind at {call.where()}")
    return tuple(
        TensorValue([t for i, t in enumerate(x.terms) if i != d], m.shape) for m in call.out
    )


def _slice_axis(
    call: Call, ctx: RuleContext, t: Term, n: int, s: slice, at: int | None = None
) -> Term | None:
    """``at``: the position of the slice's start among the op's sizes (``LiteralSize.index``)."""
    start, stop, step = s.indices(n)
    if step != 1:
        ctx.freeze(t, f"strided slice at {call.where()}")
        return Fixed(len(range(start, stop, step)))
    if start == 0 and stop == n:
        stop_literal = isinstance(s.stop, int) and not isinstance(s.stop, Dynamic)
        if stop_literal and ctx.traced.kind == TracerKind.FX and _has_atoms(ctx, t):
            # x[:, :self.out_chs] that keeps the whole axis: the bound must follow its width
            ctx.literal(t, s.stop, call, index=None if at is None else at + 1)
        return t
    literal = any(isinstance(b, int) and not isinstance(b, Dynamic) for b in (s.start, s.stop))
    if literal and ctx.traced.kind == TracerKind.FX and _has_atoms(ctx, t):
        ctx.freeze(t, f"slice with literal bounds at {call.where()}")
        return Fixed(max(stop - start, 0))
    if stop <= start:  # an empty slice (Phi-3's q[..., rotary_dim:] at full rotary): no units
        ctx.freeze(t, f"empty slice at {call.where()} (it must stay empty)")
        return Fixed(0)
    sizes = [x for x in (start, stop - start, n - stop) if x > 0]
    pieces = ctx.store.split(t, sizes, call.where())
    if pieces is None:
        ctx.freeze(t, f"cannot slice this axis at {call.where()}")
        return Fixed(max(stop - start, 0))
    return pieces[1] if start > 0 else pieces[0]


def index_tensor(call: Call, ctx: RuleContext, x: TensorValue, index: Any) -> Any:
    idx = index if isinstance(index, tuple) else (index,)
    if any(_is_index(i) for i in idx):
        if any(i is None for i in idx):
            return ctx.block(call, "advanced indexing mixed with new axes")
        plain = [i for i in idx if i is not Ellipsis]
        at = idx.index(Ellipsis) if Ellipsis in idx else len(plain)
        return _advanced_index(
            call, ctx, x, [*plain[:at], *[slice(None)] * (x.ndim - len(plain)), *plain[at:]]
        )
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    offsets: list[int | None] = []  # where each index starts among the op's sizes
    offset = 0
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_real))
            offsets.extend([None] * (x.ndim - n_real))
        else:
            expanded.append(i)
            offsets.append(offset)
        offset += 3 if isinstance(i, slice) else 1
    n_more = x.ndim - sum(1 for i in expanded if i is not None)
    expanded.extend([slice(None)] * n_more)
    offsets.extend([None] * n_more)
    terms: list[Term] = []
    d = 0
    for i, at in zip(expanded, offsets):
        if i is None:
            terms.append(Fixed(1))
            continue
        t, n = x.terms[d], x.shape[d]
        if isinstance(i, int):
            if _has_atoms(ctx, t):
                ctx.freeze(t, f"integer index on this axis at {call.where()}")
        elif isinstance(i, slice):
            sliced = _slice_axis(call, ctx, t, n, i, at)
            terms.append(sliced if sliced is not None else Fixed(1))
        else:
            return ctx.block(call, f"unsupported index {i!r}")
        d += 1
    return TensorValue(terms, out_shape(call))


def _advanced_index(call: Call, ctx: RuleContext, x: TensorValue, idx: list[Any]) -> Any:
    """``x[..., idx, ...]`` with index tensors (a Python ``getitem`` whose other entries are
    full slices, or ``aten.index``, whose ``None`` entries are full slices)."""
    if any(i is not None and i != slice(None) and not _is_index(i) for i in idx):
        return ctx.block(call, "advanced indexing mixed with slices or new axes")
    idx = [None if i == slice(None) else i for i in idx]
    idx += [None] * (x.ndim - len(idx))
    picked = [p for p, i in enumerate(idx) if i is not None]
    if len(picked) == 1:
        p = picked[0]
        span = _written_positions(idx[p], x.shape[p])
        if span is not None:  # fused[..., [-2], :]: positions written in code
            terms = list(x.terms)
            terms[p] = _pick(call, ctx, terms[p], x.shape[p], *span)
            return TensorValue(terms, out_shape(call))
    tensors = [_as_value(idx[p]) for p in picked]
    try:
        shape = tuple(torch.broadcast_shapes(*(t.shape for t in tensors)))
    except RuntimeError:
        shape = None
    adjacent = picked == list(range(picked[0], picked[-1] + 1))
    at = picked[0] if adjacent else 0
    rest = [p for p in range(x.ndim) if p not in picked]
    expected = None if shape is None else [x.shape[p] for p in rest]
    if expected is None or (*expected[:at], *shape, *expected[at:]) != out_shape(call):
        # a boolean mask consumes as many axes as it has, and picks a data-dependent count
        return ctx.block(call, "indexing with a boolean mask or unbroadcastable indices")
    for p in picked:
        ctx.freeze(x.terms[p], f"gathered by an index tensor at {call.where()}")
    gathered = _broadcast_terms(call, ctx, tensors, shape)
    kept = [x.terms[p] for p in rest]
    return TensorValue([*kept[:at], *gathered, *kept[at:]], out_shape(call))


def _is_index(i: Any) -> bool:
    return isinstance(i, TensorValue) or (
        isinstance(i, (list, tuple)) and all(isinstance(v, int) for v in i)
    )


def _written_positions(i: Any, n: int) -> tuple[int, int, bool] | None:
    """(start, stop, from_end) of the positions an index list (or a known 1-D constant index
    tensor) picks, when they are consecutive and ascending and all counted from one end;
    else None."""
    if isinstance(i, TensorValue):
        if i.constant is None or i.constant.ndim != 1 or i.constant.dtype == torch.bool:
            return None
        i = i.constant.tolist()
    if not i or not all(-n <= v < n for v in i) or len({v < 0 for v in i}) != 1:
        return None
    positions = [v % n for v in i]
    if positions != list(range(positions[0], positions[0] + len(positions))):
        return None
    return positions[0], positions[-1] + 1, i[0] < 0


def _pick(
    call: Call, ctx: RuleContext, t: Term, n: int, start: int, stop: int, from_end: bool
) -> Term:
    """The picked piece of axis ``t``. Positions counted from the end stay right while the
    part before them grows, positions from the start while the part after grows: the other
    pieces keep their size. A piece of one position is a plain ``Fixed(1)``."""
    sizes = [s for s in (start, stop - start, n - stop) if s > 0]
    pieces = ctx.store.split(t, sizes, call.where()) if _has_atoms(ctx, t) else None
    if pieces is None:
        if _has_atoms(ctx, t):
            ctx.freeze(t, f"index list on this axis at {call.where()}")
        return Fixed(stop - start)
    at = 1 if start > 0 else 0
    growing = 0 if from_end and start > 0 else len(pieces) - 1 if not from_end else None
    for k, piece in enumerate(pieces):
        if k != growing or k == at:
            if piece.size == 1:
                ctx.unify(piece, Fixed(1), call)
            elif _has_atoms(ctx, piece):
                ctx.freeze(piece, f"positions written in code at {call.where()}")
    picked = pieces[at]
    return Fixed(1) if picked.size == 1 else picked


def _as_value(i: Any) -> TensorValue:
    if isinstance(i, TensorValue):
        return i
    return TensorValue([Fixed(len(i))], (len(i),))


def _broadcast_terms(
    call: Call, ctx: RuleContext, values: list[TensorValue], shape: tuple[int, ...]
) -> list[Term]:
    """The index tensors' axes broadcast together (positions: nothing to copy or reduce)."""
    terms: list[Term] = []
    nd = len(shape)
    for j in range(nd):
        meeting = [
            v.terms[v.ndim - nd + j]
            for v in values
            if v.ndim - nd + j >= 0 and v.shape[v.ndim - nd + j] == shape[j] and shape[j] != 1
        ]
        for t in meeting[1:]:
            ctx.unify(meeting[0], t, call)
        terms.append(meeting[0] if meeting else Fixed(shape[j]))
    return terms


@rules.rule("getitem", signature="obj, index")
def getitem(call: Call, ctx: RuleContext) -> Any:
    obj, index = call.args["obj"], call.args["index"]
    if isinstance(obj, TensorValue):
        return index_tensor(call, ctx, obj, index)
    if obj is None:
        return call.out
    return obj[index]


@rules.rule("index", signature="input, indices")
def index(call: Call, ctx: RuleContext) -> Any:
    return _advanced_index(call, ctx, call.args["input"], list(call.args["indices"]))


@rules.rule("select", signature="input, dim, index")
def select(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    if _has_atoms(ctx, x.terms[d]):
        ctx.freeze(x.terms[d], f"select on this axis at {call.where()}")
    return TensorValue([t for i, t in enumerate(x.terms) if i != d], out_shape(call))


@rules.rule(
    "slice",
    signature="input, dim=0, start=None, end=None, step=1",
    names=("narrow",),
    also={"narrow": "input, dim, start, length"},
)
def slice_(call: Call, ctx: RuleContext) -> Any:
    x = call.args["input"]
    d = x.dim(call.args["dim"])
    if "length" in call.args:
        s = slice(call.args["start"], call.args["start"] + call.args["length"])
    else:
        s = slice(call.args["start"], call.args["end"], call.args["step"])
    terms = list(x.terms)
    sliced = _slice_axis(call, ctx, terms[d], x.shape[d], s)
    terms[d] = sliced if sliced is not None else Fixed(out_shape(call)[d])
    return TensorValue(terms, out_shape(call))


@rules.rule("index_put", signature="input, indices, values, accumulate=False")
def index_put(call: Call, ctx: RuleContext) -> Any:
    """``x[indices] = values``: the indexed axes are positions (frozen); the axes after them
    take ``values``' trailing axes unit for unit."""
    x, values = call.args["input"], call.args["values"]
    indices = list(call.args["indices"])
    if not all(i is None or isinstance(i, TensorValue) for i in indices):
        return ctx.block(call, "index_put with indices that are not tensors")
    for p, i in enumerate(indices):
        if i is not None:
            ctx.freeze(x.terms[p], f"written by an index tensor at {call.where()}")
    if isinstance(values, TensorValue):
        for back in range(1, min(values.ndim, x.ndim - len(indices)) + 1):
            if values.shape[-back] == x.shape[-back] != 1:
                ctx.unify(values.terms[-back], x.terms[-back], call)
        for d in range(values.ndim - (x.ndim - len(indices))):
            ctx.freeze(values.terms[d], f"written by an index tensor at {call.where()}")
    return TensorValue(list(x.terms), out_shape(call))
