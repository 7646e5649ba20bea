"""Paired noise (``widen(..., symmetry="paired")``): replicas diverge, the function stays exact.

HyperCloning-style symmetry breaking. Each replicated unit's outgoing weights are first
divided equally among its ``k`` replicas (``1/k``, as ``symmetry="none"``); then replica ``r``
gets noise ``N_r`` on those weights with ``sum_r N_r = 0`` for every weight (for ``k = 2``:
``+N`` and ``-N``). The replicas read the same input value (they are copies), so the layer
that sums over them sees ``sum_r (W/k + N_r) h = W h``: the output is unchanged, while the
replicas' outgoing weights, and so their gradients, differ from the first step.

Each ``N_r`` is marginally ``Normal(0, (sigma * s)^2)``, where ``s`` is the standard deviation
of the grown tensor before noise (its root-mean-square when all its entries are equal, e.g. a
norm weight of ones); the noise is drawn as ``k`` independent normals, minus their mean, times
``sqrt(k / (k - 1))``.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidArgumentError
from .axis_maps import AxisMap

__all__ = ["DEFAULT_PAIR_NOISE", "add_paired_noise", "check_pair_noise", "zero_sum_noise"]

DEFAULT_PAIR_NOISE = 0.01
"""``widen(..., symmetry="paired")``'s default ``pair_noise``: each replica's noise has the
standard deviation ``0.01 × std`` of the weight tensor it is added to."""


def check_pair_noise(value: object) -> float:
    """``value`` as a float, or InvalidArgumentError unless it is a finite number >= 0.

    >>> check_pair_noise(0.01)
    0.01
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidArgumentError(
            f"pair_noise must be a finite number >= 0 (the noise scale of "
            f'symmetry="paired", relative to each tensor\'s std), got {value!r}'
        )
    return float(value)


def _scale(t: torch.Tensor) -> float:
    """The noise unit of a tensor: its std, or its root-mean-square if its entries are equal."""
    flat = t.detach().double().reshape(-1)
    std = float(flat.std()) if flat.numel() > 1 else 0.0
    return std if std > 0 else float(flat.pow(2).mean().sqrt())


def zero_sum_noise(
    shape: torch.Size, dim: int, source: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Standard-normal noise (float64) of ``shape`` that sums to zero over the replicas of each
    old unit along ``dim`` (``source[i]``: the old unit new unit ``i`` copies); zero on units
    without a replica.

    >>> g = torch.Generator().manual_seed(0)
    >>> n = zero_sum_noise(torch.Size([2, 3]), 1, torch.tensor([0, 1, 0]), g)
    >>> torch.allclose(n[:, 0], -n[:, 2]), bool((n[:, 1] == 0).all())
    (True, True)
    """
    draw = torch.randn(shape, generator=generator, dtype=torch.float64)
    old = int(source.max()) + 1
    counts = torch.bincount(source, minlength=old).to(torch.float64)
    sums_shape = list(shape)
    sums_shape[dim] = old
    sums = torch.zeros(sums_shape, dtype=torch.float64).index_add_(dim, source, draw)
    view = [1] * len(shape)
    view[dim] = -1
    k = counts[source]
    mean = sums.index_select(dim, source) / k.view(view)
    # k independent normals minus their mean have variance (k-1)/k: rescale to 1
    gain = torch.where(k > 1, (k / (k - 1).clamp(min=1)).sqrt(), torch.zeros_like(k))
    return (draw - mean) * gain.view(view)


def add_paired_noise(
    tensors: dict[str, torch.Tensor],
    axis_maps: dict[str, list[AxisMap]],
    sigma: float,
    generator: torch.Generator,
) -> None:
    """Add zero-sum noise in place along every reduce (outgoing) axis of the grown ``tensors``.

    ``tensors`` and ``axis_maps`` are widen's grown tensors and their axis maps (names in
    sorted order, so a seed gives the same noise). Integer tensors and tensors without a
    grown reduce axis are left as they are.

    >>> from autogrow.transforms.mapping import UnitMap
    >>> m = UnitMap(torch.tensor([0, 1, 0, 1]), torch.full((4,), 0.5, dtype=torch.float64))
    >>> w = torch.ones(3, 4) * 0.5
    >>> add_paired_noise({"w": w}, {"w": [AxisMap(1, m, True)]}, 0.1, torch.Generator())
    >>> torch.allclose(w[:, 0] + w[:, 2], torch.ones(3)), bool((w[:, 0] != w[:, 2]).all())
    (True, True)
    """
    if sigma == 0:
        return
    for name in sorted(tensors):
        t = tensors[name]
        reduce_axes = [a for a in axis_maps.get(name, ()) if a.reduce]
        if not reduce_axes or not t.is_floating_point():
            continue
        scale = sigma * _scale(t)
        if scale == 0:
            continue
        for a in reduce_axes:
            noise = zero_sum_noise(t.shape, a.dim, a.map.source, generator)
            t.add_((noise * scale).to(dtype=t.dtype, device=t.device))
