"""Growing one stored tensor by its axis maps, as
:func:`~autogrow.transforms.axis_maps.grow_tensor` does (the same values, bit for bit), but
faster on the CPU for inner axes: torch's ``index_select`` along an inner axis of a 2-byte
tensor (bfloat16, float16) copies element by element, while numpy's ``take`` on the same
bytes viewed as integers runs several times faster. Growing is pure data movement plus the
share scaling, so the route does not change a bit of the result. Without numpy installed,
torch's route is taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:
    import numpy as np
except ImportError:  # numpy is optional for torch: then index_select does the work
    np = None  # type: ignore[assignment]

from ...transforms.axis_maps import AxisMap, grow_tensor

_SAME_BYTES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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
