"""Growing one stored tensor by its axis maps, as
:func:`~autogrow.transforms.axis_maps.grow_tensor` does (the same values, bit for bit), with
as little memory traffic as the CPU allows.

For a matrix (the weights of language models) the inner axis is gathered first, on the
smaller tensor, with numpy's ``take`` on the bytes viewed as integers (torch's
``index_select`` along an inner axis of a 2-byte tensor copies element by element, several
times slower), straight into a buffer the writer reuses (a fresh allocation of that size costs
more in page faults than the gather itself). Its share scaling follows in place. The gather
of rows (the outer axis) is not done at all: :class:`Grown` names the rows, and the writer
hands them to the kernel as a list of row buffers (``pwritev``), which copies them into the
file. Growing is pure data movement plus the share scaling, whose products are the same
whatever the order of the gathers, so the route does not change a bit of the result. Other
tensors (vectors, filled groups, tensors of more axes) go through ``grow_tensor``'s route.
Without numpy installed, torch's route is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:
    import numpy as np
except ImportError:  # numpy is optional for torch: then index_select does the work
    np = None  # type: ignore[assignment]

from ...transforms.axis_maps import AxisMap, grow_tensor

_SAME_BYTES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class Grown:
    """A grown tensor as the writer receives it: ``value`` (contiguous), or, when ``rows`` is
    set, ``value.index_select(0, rows)``, whose rows are written without being gathered."""

    value: torch.Tensor
    rows: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.rows is None:
            return tuple(self.value.shape)
        return (len(self.rows), *self.value.shape[1:])

    def materialize(self) -> torch.Tensor:
        """The grown tensor itself (a copy when rows are named)."""
        return self.value if self.rows is None else self.value.index_select(0, self.rows)


def select(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``t.index_select(dim, index)`` (a new contiguous tensor).

    >>> t, i = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), torch.tensor([2, 0, 2])
    >>> torch.equal(select(t, 1, i), t.index_select(1, i))
    True
    """
    as_int = _SAME_BYTES.get(t.element_size())
    if np is None or dim == 0 or t.device.type != "cpu" or as_int is None or t.dtype == torch.bool:
        return t.index_select(dim, index)
    raw = t.contiguous().view(as_int).numpy()
    taken = np.take(raw, index.numpy(), axis=dim)
    return torch.from_numpy(taken).view(t.dtype)


def grow(t: torch.Tensor, axes: Sequence[AxisMap]) -> torch.Tensor:
    """``grow_tensor(t, axes)`` for weights: each axis's units picked by ``map.source``, and
    reduce axes scaled by ``map.share`` in the tensor's dtype. Axes of filled groups (a fill
    or a factor) go through ``grow_tensor`` itself."""
    if any(getattr(a.map, "filled", None) is not None or a.factor != 1.0 for a in axes):
        return grow_tensor(t, axes)
    for a in axes:
        t = select(t, a.dim, a.map.source)
        if a.reduce and t.is_floating_point():
            shape = [1] * t.ndim
            shape[a.dim] = -1
            t.mul_(a.map.share.to(dtype=t.dtype).view(shape))  # t is a fresh copy
    return t.contiguous()


def _fast_axes(
    shape: Sequence[int], dtype: torch.dtype, axes: Sequence[AxisMap]
) -> tuple[AxisMap | None, AxisMap | None] | None:
    """(the row axis map, the column axis map) when the matrix route applies, else None: a
    matrix whose elements numpy can move as integers, at most one map per axis, no filled
    group, and no scaling along rows (which would have to happen before they are picked)."""
    if np is None or len(shape) != 2 or dtype == torch.bool or dtype.itemsize not in _SAME_BYTES:
        return None
    if any(getattr(a.map, "filled", None) is not None or a.factor != 1.0 for a in axes):
        return None
    by_dim = {a.dim: a for a in axes}
    if len(by_dim) != len(axes) or not set(by_dim) <= {0, 1}:
        return None
    rows, cols = by_dim.get(0), by_dim.get(1)
    if rows is not None and rows.reduce and dtype.is_floating_point:
        return None
    return rows, cols


def scratch_bytes(shape: Sequence[int], dtype: torch.dtype, axes: Sequence[AxisMap]) -> int:
    """Bytes of reusable buffer :func:`grow_into` needs for a tensor of this shape (0: none).

    >>> from autogrow.transforms.mapping import sample_map
    >>> m = sample_map(3, 5, uniform=False, symmetry="split", generator=torch.Generator())
    >>> scratch_bytes((4, 3), torch.bfloat16, [AxisMap(1, m, True)])
    40
    """
    fast = _fast_axes(shape, dtype, axes)
    if fast is None or fast[1] is None:
        return 0
    return shape[0] * len(fast[1].map.source) * dtype.itemsize


def grow_into(t: torch.Tensor, axes: Sequence[AxisMap], buffer: torch.Tensor | None) -> Grown:
    """``grow_tensor(t, axes)`` as a :class:`Grown`, bit for bit; a matrix's columns are
    gathered into ``buffer`` (uint8, at least :func:`scratch_bytes` long) and its rows left to
    the writer. ``t`` itself is never modified."""
    fast = _fast_axes(tuple(t.shape), t.dtype, axes) if axes else None
    if not axes:
        return Grown(t.contiguous())
    if fast is None or t.device.type != "cpu":
        return Grown(grow(t, axes))
    rows, cols = fast
    value = t.contiguous()
    if cols is not None:
        index = cols.map.source
        n = t.shape[0] * len(index) * t.element_size()
        if buffer is None or buffer.numel() < n:
            buffer = torch.empty(n, dtype=torch.uint8)
        as_int = _SAME_BYTES[t.element_size()]
        out = buffer[:n].view(as_int).view(t.shape[0], len(index))
        # mode="clip": the indices are valid, and numpy buffers ``out`` under the default mode
        np.take(value.view(as_int).numpy(), index.numpy(), axis=1, out=out.numpy(), mode="clip")
        value = out.view(t.dtype)
        if cols.reduce and value.is_floating_point():
            value.mul_(cols.map.share.to(dtype=value.dtype).view(1, -1))
    return Grown(value, None if rows is None else rows.map.source)
