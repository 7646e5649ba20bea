"""Weight-normalised layers after widening: ``w = g · v / ‖v‖`` stays the grown weight.

The ``weight_norm`` rule lets ``v`` grow as the layer's weight would (rows copied, input
columns divided). The norm over the grown ``v`` is not the old one, so each scale ``g`` (one
per slice of the kept axis) is multiplied by ``‖v'‖ / ‖v‖``: then ``g' · v' / ‖v'‖`` equals
``g / ‖v‖ · v'``, which is the old weight grown, since growing is linear per slice.
"""

from __future__ import annotations

import torch

from ..errors import ConstraintError
from ..rules.context import Analysis
from ..rules.registry import TensorValue


def rescale_weight_norms(analysis: Analysis, tensors: dict[str, torch.Tensor]) -> None:
    """Set ``tensors[g]`` for every weight norm whose ``v`` is in ``tensors`` (grown)."""
    for call in analysis.calls.values():
        v, g = call.args.get("v"), call.args.get("g")
        if call.name != "weight_norm" or not isinstance(v, TensorValue) or v.param not in tensors:
            continue
        assert isinstance(g, TensorValue) and g.param is not None
        dim = v.dim(call.args["dim"])
        old_v, new_v = analysis.params[v.param].tensor.detach(), tensors[v.param]
        if old_v.is_meta:  # a streamed checkpoint plans on meta: g cannot be computed there
            raise ConstraintError(
                f"{call.where()} normalises {v.param}: its scale {g.param} must be rescaled "
                "by the grown norm, which needs the weights' values. Widen this model in "
                "memory (autogrow.widen), or leave the layer's groups out."
            )
        old_g = tensors.get(g.param, analysis.params[g.param].tensor.detach())
        ratio = _norm_except(new_v.double(), dim) / _norm_except(old_v.double(), dim)
        tensors[g.param] = (old_g.double() * ratio).to(old_g.dtype)


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch._weight_norm``'s norm: over every axis but ``dim``, kept as size-1 axes."""
    others = [d for d in range(v.ndim) if d != dim]
    return torch.linalg.vector_norm(v, dim=others, keepdim=True)
