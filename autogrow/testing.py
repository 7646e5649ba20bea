"""Helpers for testing growth on randomly initialised models.

Fresh architectures often start with constant parameters (zero classifier heads, unit norm
weights, a 1e-6 layer scale) that hide whole layers from the output, so comparing outputs
would prove little. :func:`randomize_constant_tensors` redraws them.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_constant_tensors(model: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every floating parameter and buffer whose entries are all equal; returns ``model``.

    Zero tensors get N(0, 0.05²); positive constants c are scaled by U(0.5, 1.5) (tiny ones,
    like a 1e-6 layer scale, become U(0.5, 1.5)); other constants get c + N(0, 0.1²).

    >>> net = torch.nn.Linear(3, 2); _ = torch.nn.init.zeros_(net.weight)
    >>> bool(randomize_constant_tensors(net).weight.std() > 0)
    True
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if not t.is_floating_point() or t.numel() < 2:
                continue
            c = t.flatten()[0].item()
            if not bool((t == c).all()):
                continue
            shape = t.shape
            if c == 0:
                new = 0.05 * torch.randn(shape, generator=gen)
            elif 0 < c < 1e-3:
                new = 0.5 + torch.rand(shape, generator=gen)
            elif c > 0:
                new = c * (0.5 + torch.rand(shape, generator=gen))
            else:
                new = c + 0.1 * torch.randn(shape, generator=gen)
            t.copy_(new.to(t.dtype))
    return model
