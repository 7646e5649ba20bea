"""How each grown tensor is computed from an old one: one :class:`AxisMap` per changing axis.

Widen grows parameters and buffers with these maps; the optimizer code grows moments and
momentum buffers with the same maps (gradients take the shares on the other axes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..rules.context import REDUCE, Analysis
from .mapping import UnitMap, term_map

__all__ = ["AxisMap", "grow_tensor", "grown_tensors", "param_axis_maps"]


@dataclass(frozen=True)
class AxisMap:
    """How one axis of a parameter grows: ``map.source`` picks old units; ``reduce`` says the
    axis is contracted with the group's units (outgoing weights, which take ``map.share``)."""

    dim: int
    map: UnitMap
    reduce: bool


def param_axis_maps(analysis: Analysis, maps: dict[int, UnitMap]) -> dict[str, list[AxisMap]]:
    """Per parameter or buffer an axis of which changes, its changing axes."""
    store = analysis.store
    out: dict[str, list[AxisMap]] = {}
    for name, info in analysis.params.items():
        axes = [
            AxisMap(d, term_map(store, term, maps), REDUCE in info.roles[d])
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
    """
    for a in axes:
        t = t.index_select(a.dim, a.map.source.to(t.device))
        if a.reduce != gradient and t.is_floating_point():
            shape = [1] * t.ndim
            shape[a.dim] = -1
            share = a.map.share.to(dtype=t.dtype, device=t.device) ** power
            t.mul_(share.view(shape))  # t is a fresh copy
    return t.contiguous()


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
