"""Measuring that a transformed model computes the original function (eval mode)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import VerificationError
from .tracing.trace import eval_mode, flatten_output

TOLERANCE = 1e-4


@dataclass
class Comparison:
    """Per-output max relative error: max|new - old| / max|old| (0 where both are zero)."""

    errors: list[float]

    @property
    def max_error(self) -> float:
        return max(self.errors, default=0.0)

    @property
    def worst(self) -> int:
        return max(range(len(self.errors)), key=self.errors.__getitem__) if self.errors else -1


def run(model: nn.Module, inputs: tuple) -> Any:
    """The model's own forward on ``inputs``, in eval mode, without autograd; flags restored."""
    with eval_mode(model), torch.no_grad():
        return model(*inputs)


def relative_error(new: torch.Tensor, old: torch.Tensor) -> float:
    if new.shape != old.shape:
        return float("inf")
    if not new.is_floating_point() and not new.is_complex():
        return 0.0 if torch.equal(new, old) else float("inf")
    new64, old64 = new.detach().double(), old.detach().double()
    same_nonfinite = ~torch.isfinite(old64) & (new64 == old64) | (old64.isnan() & new64.isnan())
    diff = (new64 - old64).abs().masked_fill(same_nonfinite, 0.0)
    scale = old64.abs().masked_fill(~torch.isfinite(old64), 0.0).max() if old64.numel() else 0
    peak = diff.max().item() if diff.numel() else 0.0
    if peak == 0.0:
        return 0.0
    return float(peak / scale) if scale > 0 else float("inf")


def compare(new_output: Any, reference: Any) -> Comparison:
    new, old = flatten_output(new_output), flatten_output(reference)
    if len(new) != len(old):
        return Comparison([float("inf")])
    return Comparison([relative_error(a, b) for a, b in zip(new, old)])


def verify(
    model: nn.Module, inputs: tuple, reference: Any, *, what: str, tolerance: float = TOLERANCE
) -> Comparison:
    """Run ``model`` and raise VerificationError unless it matches ``reference``."""
    try:
        output = run(model, inputs)
    except Exception as e:  # noqa: BLE001 - a model that cannot run is a failed verification
        raise VerificationError(
            f"the {what} model failed to run on the example inputs: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. This usually means forward code depends "
            "on a size autogrow could not see (a literal or a module attribute); please report it "
            "with the model's forward code."
        ) from e
    if any(r.numel() > 1 and bool((r == r.flatten()[0]).all()) for r in flatten_output(reference)):
        warnings.warn(
            "the original model's output is constant on the example inputs (a zero-initialised "
            "head?), so comparing outputs proves little; use trained weights or other inputs",
            stacklevel=3,
        )
    result = compare(output, reference)
    if not result.max_error <= tolerance:
        raise VerificationError(
            f"the {what} model differs from the original: output {result.worst} has max relative "
            f"error {result.max_error:.3g} (tolerance {tolerance:g}). Nothing was returned; "
            "this is "
            "an autogrow bug or an op whose rule is wrong, please report it."
        )
    return result
