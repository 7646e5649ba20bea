"""Layers initialised to the identity function (the building blocks of Net2DeeperNet).

Every constructor returns a fresh module that maps its input to itself exactly in eval mode:

* :func:`identity_linear`: ``Linear(c, c)`` with weight ``I`` and bias ``0``.
* :func:`identity_conv`: ``ConvNd(c, c, k, padding=k//2)`` with a centred delta kernel
  (``weight[i, i, k//2, ...] = 1``), so the spatial size is unchanged; ``depthwise=True``
  gives ``groups=c`` with one delta per channel.
* :func:`identity_batchnorm`: weight 1, bias 0, running mean 0, running var ``1 - eps`` so
  that ``running_var + eps = 1`` (exact in eval mode only: in train mode it normalises with
  the batch statistics).
* :func:`identity_prelu`: ``PReLU(init=1.0)``, the identity at initialisation and in train
  mode, which training can bend into a nonlinearity.
"""

from __future__ import annotations

import torch
from torch import nn

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BNS: dict[int, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def identity_linear(
    features: int, *, bias: bool = True, dtype: torch.dtype | None = None, device=None
) -> nn.Linear:
    """``Linear(features, features)`` computing ``y = x``.

    >>> layer = identity_linear(3)
    >>> x = torch.randn(2, 3); bool(torch.equal(layer(x), x))
    True
    """
    layer = nn.Linear(features, features, bias=bias, dtype=dtype, device=device)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(features, dtype=layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def identity_conv(
    channels: int,
    dims: int = 2,
    kernel_size: int | tuple[int, ...] = 3,
    *,
    depthwise: bool = False,
    bias: bool = True,
    dtype: torch.dtype | None = None,
    device=None,
) -> nn.Module:
    """A stride-1 ``Conv{dims}d(channels, channels)`` with a centred delta kernel: ``y = x``.

    Even kernel sizes are rounded down to the next odd size, so that ``padding=k//2`` keeps
    the spatial size.

    >>> conv = identity_conv(4, 2, 3, depthwise=True)
    >>> x = torch.randn(1, 4, 5, 5); bool(torch.equal(conv(x), x)), conv.groups
    (True, 4)
    """
    ks = (kernel_size,) * dims if isinstance(kernel_size, int) else tuple(kernel_size)
    ks = tuple(max(1, k if k % 2 else k - 1) for k in ks)
    conv = _CONVS[dims](
        channels,
        channels,
        ks,
        padding=tuple(k // 2 for k in ks),
        groups=channels if depthwise else 1,
        bias=bias,
        dtype=dtype,
        device=device,
    )
    with torch.no_grad():
        conv.weight.zero_()
        centre = tuple(k // 2 for k in ks)
        idx = torch.arange(channels)
        if depthwise:
            conv.weight[(idx, torch.zeros_like(idx), *centre)] = 1.0
        else:
            conv.weight[(idx, idx, *centre)] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def identity_batchnorm(
    channels: int,
    dims: int = 2,
    *,
    eps: float = 1e-5,
    dtype: torch.dtype | None = None,
    device=None,
) -> nn.Module:
    """A BatchNorm that is the identity in eval mode (``running_var + eps = 1``).

    >>> bn = identity_batchnorm(3, 2).eval()
    >>> x = torch.randn(2, 3, 4, 4); bool(torch.allclose(bn(x), x, atol=1e-6))
    True
    """
    bn = _BNS[dims](channels, eps=eps, dtype=dtype, device=device)
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - eps)
    return bn


def identity_prelu(channels: int = 1, *, dtype: torch.dtype | None = None, device=None) -> nn.PReLU:
    """``PReLU`` with every slope 1: the identity, in train and eval mode alike.

    >>> act = identity_prelu(3)
    >>> x = torch.randn(2, 3); bool(torch.equal(act(x), x))
    True
    """
    return nn.PReLU(channels, init=1.0, dtype=dtype, device=device)
