"""Guessing example inputs from a model's entry layer, when the caller gives none."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ExampleInputsError


class InferredInputs(tuple):
    """Example inputs autogrow guessed rather than the caller gave; ``origin`` says from what.

    A plain tuple otherwise; tracing turns a failure to run the model on them into an
    :class:`~autogrow.errors.ExampleInputsError` that quotes ``origin``.

    >>> InferredInputs((1,), "a guess")
    (1,)
    """

    origin: str

    def __new__(cls, values: tuple, origin: str) -> InferredInputs:
        self = super().__new__(cls, values)
        self.origin = origin
        return self


def _shape(x: torch.Tensor) -> str:
    return f"a {'×'.join(map(str, x.shape))} {str(x.dtype).removeprefix('torch.')} tensor"


def _origin(model: nn.Module, name: str, entry: nn.Module, x: torch.Tensor) -> str:
    """'a 1×16 float32 tensor for Linear 'fc', ...': what was inferred, and from which layer."""
    what = f"{_shape(x)} for {type(entry).__name__} {name!r}"
    first = next(
        ((n, m) for n, m in model.named_modules() if next(m.parameters(False), None) is not None),
        None,
    )
    if first is not None and first[1] is not entry:
        what += (
            f", the first Conv/Linear/Embedding layer; the model's first layer with parameters "
            f"is {type(first[1]).__name__} {first[0] or '<model>'!r}, which autogrow does not "
            "infer inputs for"
        )
    return what


_SPATIAL = {nn.Conv1d: (224,), nn.Conv2d: (224, 224), nn.Conv3d: (16, 112, 112)}


def infer_example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A plausible single-sample input for ``model``, from the first conv, linear or embedding.

    Conv{1,2,3}d with C input channels gives a 1×C×224(×224) tensor, Linear gives 1×in_features,
    Embedding gives 16 token ids. The values are drawn from a fixed seed, so repeated calls agree.

    >>> infer_example_inputs(nn.Sequential(nn.Linear(5, 3)))[0].shape
    torch.Size([1, 5])
    """
    gen = torch.Generator().manual_seed(0)
    for name, m in model.named_modules():
        param = next(m.parameters(recurse=False), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        for conv_type, spatial in _SPATIAL.items():
            if type(m) is conv_type:
                x = torch.randn(1, m.in_channels, *spatial, generator=gen, dtype=dtype)
                return InferredInputs((x.to(device),), _origin(model, name, m, x))
        if isinstance(m, nn.Linear):
            x = torch.randn(1, m.in_features, generator=gen, dtype=dtype).to(device)
            return InferredInputs((x,), _origin(model, name, m, x))
        if isinstance(m, nn.Embedding):
            ids = torch.randint(0, m.num_embeddings, (1, 16), generator=gen)
            return InferredInputs((ids.to(device),), _origin(model, name, m, ids))
    raise ExampleInputsError(
        f"cannot infer example inputs for {type(model).__name__}: no Conv1d/2d/3d, Linear or "
        "Embedding entry layer was found. Pass example_inputs=(x,) with a tensor the model accepts."
    )
