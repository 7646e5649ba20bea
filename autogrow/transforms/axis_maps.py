"""How each grown tensor is computed from an old one: one :class:`AxisMap` per changing axis.

Widen grows parameters and buffers with these maps; the optimizer code grows moments and
momentum buffers with the same maps (gradients take the shares on the other axes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..rules.context import REDUCE, Analysis
from .mapping import UnitMap, term_map

__all__ = ["AxisMap", "grow_tensor", "grown_tensors", "param_axis_maps"]


@dataclass(frozen=True)
class AxisMap:
    """How one axis of a parameter grows: ``map.source`` picks old units; ``reduce`` says the
    axis is contracted with the group's units (outgoing weights, which take ``map.share``).

    In a filled group (``map.filled``), ``fill`` says what the filled entries get: ``"mean"``
    (the mean of the old entries along the axis), ``"zero"`` or ``"free"`` (the copy of
    ``source``); and the whole axis is multiplied by ``factor`` (a norm's weight).
    """

    dim: int
    map: UnitMap
    reduce: bool
    fill: str = "free"
    factor: float = 1.0


def param_axis_maps(
    analysis: Analysis,
    maps: dict[int, UnitMap],
    fills: Mapping[tuple[str, int], tuple[str, float]] | None = None,
) -> dict[str, list[AxisMap]]:
    """Per parameter or buffer an axis of which changes, its changing axes; ``fills`` gives
    the axes of filled groups their fill and factor (``(name, dim) -> (fill, factor)``)."""
    store = analysis.store
    fills = fills or {}
    out: dict[str, list[AxisMap]] = {}
    for name, info in analysis.params.items():
        axes = [
            AxisMap(
                d, term_map(store, term, maps), REDUCE in info.roles[d], *fills.get((name, d), ())
            )
            for d, term in enumerate(info.terms)
            if any(a.id in maps for a in store.leaf_atoms(term))
        ]
        if axes:
            out[name] = axes
    return out


def grow_tensor(
    t: torch.Tensor, axes: Sequence[AxisMap], *, power: float = 1, gradient: bool = False
) -> torch.Tensor:
    """Apply a parameter's axis maps to a tensor of its shape (a new tensor).

    Weights (``gradient=False``) take ``share ** power`` along reduce axes. Gradients and
    optimizer moments (``gradient=True``) take it along the other (copied) axes: a replica's
    gradient is its share of the old unit's (docs/training-state.md).

    Filled entries (``map.filled``) of weights get the axis's ``fill``. Those of optimizer
    state start afresh: zero, except second moments (``power=2``, gradient statistics), which
    take the mean over the old units so that the first steps keep the old step size; an axis
    ``factor`` c scales state like the gradient (``c ** -power``) or like the weight.
    """
    for a in axes:
        t = t.index_select(a.dim, a.map.source.to(t.device))
        if not t.is_floating_point():
            continue
        shape = [1] * t.ndim
        shape[a.dim] = -1
        if a.reduce != gradient:
            share = a.map.share.to(dtype=t.dtype, device=t.device) ** power
            t.mul_(share.view(shape))  # t is a fresh copy
        if a.map.filled is not None:
            _fill(t, a, power, gradient)
        if a.factor != 1.0:
            t.mul_(a.factor ** (-power if gradient else power))
    return t.contiguous()


def _fill(t: torch.Tensor, a: AxisMap, power: float, gradient: bool) -> None:
    """Set the filled entries of ``t`` along ``a.dim`` (in place)."""
    filled = a.map.filled  # type: ignore[union-attr]  # on the CPU: ``t`` may be on meta
    if not bool(filled.any()):
        return
    where = filled.nonzero().squeeze(1).to(t.device)
    old = int(a.map.source.max()) + 1
    kept = t.narrow(a.dim, 0, old)  # the first ``old`` entries are the old units, in order
    if gradient or power != 1:
        fill = "mean" if power == 2 else "zero"
    else:
        fill = a.fill
    if fill == "free":
        return
    value = (
        kept.mean(a.dim, keepdim=True)
        if fill == "mean"
        else torch.zeros_like(kept.narrow(a.dim, 0, 1))
    )
    t.index_copy_(a.dim, where, value.expand_as(t.index_select(a.dim, where)).contiguous())


def grown_tensors(
    analysis: Analysis,
    maps: dict[int, UnitMap],
    axis_maps: dict[str, list[AxisMap]] | None = None,
) -> dict[str, torch.Tensor]:
    """New values of every parameter and buffer an axis of which changes."""
    if axis_maps is None:
        axis_maps = param_axis_maps(analysis, maps)
    return {
        name: grow_tensor(analysis.params[name].tensor.detach(), axes)
        for name, axes in axis_maps.items()
    }
