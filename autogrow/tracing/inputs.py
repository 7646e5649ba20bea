"""Guessing example inputs from a model's entry layer, when the caller gives none."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ExampleInputsError

_SPATIAL = {nn.Conv1d: (224,), nn.Conv2d: (224, 224), nn.Conv3d: (16, 112, 112)}


def infer_example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """A plausible single-sample input for ``model``, from the first conv, linear or embedding.

    Conv{1,2,3}d with C input channels gives a 1×C×224(×224) tensor, Linear gives 1×in_features,
    Embedding gives 16 token ids. The values are drawn from a fixed seed, so repeated calls agree.

    >>> infer_example_inputs(nn.Sequential(nn.Linear(5, 3)))[0].shape
    torch.Size([1, 5])
    """
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        param = next(m.parameters(recurse=False), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        for conv_type, spatial in _SPATIAL.items():
            if type(m) is conv_type:
                x = torch.randn(1, m.in_channels, *spatial, generator=gen, dtype=dtype)
                return (x.to(device),)
        if isinstance(m, nn.Linear):
            return (torch.randn(1, m.in_features, generator=gen, dtype=dtype).to(device),)
        if isinstance(m, nn.Embedding):
            ids = torch.randint(0, m.num_embeddings, (1, 16), generator=gen)
            return (ids.to(device),)
    raise ExampleInputsError(
        f"cannot infer example inputs for {type(model).__name__}: no Conv1d/2d/3d, Linear or "
        "Embedding entry layer was found. Pass example_inputs=(x,) with a tensor the model accepts."
    )
