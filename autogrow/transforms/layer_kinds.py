"""Which ``torch.nn`` layer types the transforms treat alike: one definition per meaning.

``deepen`` (residual branch ends, identity stacks) and the search's default growth sites ask
the same questions about a module (is it a Linear/Conv, a normalisation layer with a feature
width, an activation); the answers live here.
"""

from __future__ import annotations

from torch import nn

CONV_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The convolutions whose weight is ``(out, in / groups, *kernel)``."""

LINEAR_OR_CONV: tuple[type[nn.Module], ...] = (nn.Linear, *CONV_LAYERS)
"""Layers with a weight and an optional bias that produce a hidden width."""

FEATURE_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)
"""Normalisation layers over one feature width (see :func:`norm_width`)."""

IDEMPOTENT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Hardtanh)
"""Activations with ``f(f(x)) = f(x)`` (``nn.ReLU6`` is a ``Hardtanh``)."""


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is one of ``torch.nn``'s activation modules.

    >>> is_activation(nn.GELU()), is_activation(nn.Linear(2, 2))
    (True, False)
    """
    return type(module).__module__.startswith("torch.nn.modules.activation")


def norm_width(module: nn.Module) -> int:
    """The feature width a :data:`FEATURE_NORMS` layer normalises.

    >>> norm_width(nn.GroupNorm(2, 8)), norm_width(nn.LayerNorm(5)), norm_width(nn.BatchNorm2d(3))
    (8, 5, 3)
    """
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return module.num_features  # type: ignore[return-value]
