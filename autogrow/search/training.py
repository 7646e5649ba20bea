"""Training, evaluation and re-initialisation of one trial's model (plain PyTorch loops)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer) -> int:
    """One epoch of cross-entropy training; returns the number of optimizer steps taken.

    >>> net = torch.nn.Linear(4, 3)
    >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))] * 2
    >>> train_epoch(net, data, torch.optim.SGD(net.parameters(), lr=0.1))
    2
    """
    model.train()
    steps = 0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        steps += 1
    return steps


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Classification accuracy in eval mode.

    >>> net = torch.nn.Linear(2, 2)
    >>> 0.0 <= evaluate(net, [(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))]) <= 1.0
    True
    """
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (tied parameters counted once).

    >>> count_params(torch.nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters())


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Draw fresh weights for every module that has ``reset_parameters``; returns ``model``.

    Used by ``--from-scratch``: the child keeps the grown architecture but none of the
    parent's weights (BatchNorm running statistics are reset too).

    >>> net = torch.nn.Linear(3, 2); _ = torch.nn.init.zeros_(net.weight)
    >>> bool(reinitialize(net, 0).weight.abs().sum() > 0)
    True
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    return model


def describe(model: nn.Module) -> str:
    """A one-line architecture: the leaf layers with their sizes, in registration order.

    >>> describe(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
    'Linear(4→8) ReLU Linear(8→2)'
    """
    parts = []
    for m in model.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.Linear):
            parts.append(f"Linear({m.in_features}→{m.out_features})")
        elif isinstance(m, nn.modules.conv._ConvNd):
            k = "x".join(str(s) for s in m.kernel_size)
            parts.append(f"Conv{k}({m.in_channels}→{m.out_channels})")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            parts.append(f"BN({m.num_features})")
        else:
            parts.append(type(m).__name__)
    return " ".join(parts)
