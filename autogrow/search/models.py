"""Seed-model factories for the shipped search spaces (importable, so checkpoints rebuild).

A checkpoint names its seed's factory as ``"package.module:callable"`` plus JSON keyword
arguments; these live in the package so that ``autogrow.load`` finds them on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp(
    in_features: int = 64, hidden: Sequence[int] = (32, 32), num_classes: int = 10
) -> nn.Module:
    """A flatten + Linear/ReLU stack + Linear classifier.

    >>> mlp(64, (16,), 10)
    Sequential(
      (0): Flatten(start_dim=1, end_dim=-1)
      (1): Linear(in_features=64, out_features=16, bias=True)
      (2): ReLU()
      (3): Linear(in_features=16, out_features=10, bias=True)
    )
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    num_classes: int = 10,
    image_size: int = 28,
) -> nn.Module:
    """Conv 3x3/ReLU/MaxPool stages, then flatten, one hidden Linear and the classifier.

    >>> cnn(1, (8,), 16, 10, 8)[-3]
    Linear(in_features=128, out_features=16, bias=True)
    """
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, size = out, size // 2
    layers += [nn.Flatten(), nn.Linear(c * size * size, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """``x + bn(conv(relu(bn(conv(x)))))`` followed by ReLU: a shape-preserving residual block.

    >>> import torch
    >>> BasicBlock(4)(torch.randn(1, 4, 6, 6)).shape
    torch.Size([1, 4, 6, 6])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    """A stem, then stages of residual blocks; each later stage halves the resolution first.

    >>> import torch
    >>> SmallResNet(1, (8, 16), (1, 1), 10)(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32),
        blocks: Sequence[int] = (1, 1),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        c = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            down: list[nn.Module] = []
            if i > 0:  # a strided conv changes width and resolution between stages
                down = [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w)]
                down.append(nn.ReLU())
            stages.append(nn.Sequential(*down, *[BasicBlock(w) for _ in range(n)]))
            c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def small_resnet(
    in_channels: int = 1,
    widths: Sequence[int] = (16, 32),
    blocks: Sequence[int] = (1, 1),
    num_classes: int = 10,
) -> nn.Module:
    """Factory of :class:`SmallResNet` (JSON keyword arguments).

    >>> small_resnet(1, (8,), (2,)).stages[0][1].conv1
    Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    return SmallResNet(in_channels, widths, blocks, num_classes)
