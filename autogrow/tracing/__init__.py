"""Tracing: capture a model as an fx graph with shapes (torch.fx, falling back to torch.export)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import InvalidArgumentError
from .inputs import infer_example_inputs
from .trace import TensorMeta, Traced, TracerKind, eval_mode, flatten_output, trace

__all__ = [
    "Traced",
    "TensorMeta",
    "TracerKind",
    "eval_mode",
    "flatten_output",
    "trace",
    "prepare_inputs",
]


def prepare_inputs(model: Any, example_inputs: Any) -> tuple:
    """Check the model and normalise ``example_inputs`` to a tuple (inferring it when None)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        return infer_example_inputs(model)
    if not isinstance(example_inputs, tuple):
        raise InvalidArgumentError(
            "example_inputs must be a tuple of positional arguments, e.g. (x,); got "
            f"{type(example_inputs).__name__}"
        )
    return example_inputs
