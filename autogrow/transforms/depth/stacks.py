"""Identity stacks: the layers inserted after a module so that the function stays the same.

After a module whose output is a floating ``(batch, features...)`` tensor of one width, a stack
``[Linear/Conv = I, BatchNorm = I (if the model uses BatchNorm), activation]`` is the identity:
the activation is a copy of the module itself when it is an idempotent activation (ReLU,
ReLU6, Hardtanh) and ``PReLU(init=1)`` otherwise. Identity convs follow the producing conv's
layout (depthwise stays depthwise; dense kernels are capped at 3x3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ...errors import InvalidArgumentError, UnsupportedOpError
from ..layer_kinds import (
    CONV_LAYERS,
    FEATURE_NORMS,
    IDEMPOTENT_ACTIVATIONS,
    LINEAR_OR_CONV,
    norm_width,
)
from .identity import identity_batchnorm, identity_conv, identity_linear, identity_prelu
from .points import InsertionKind, InsertionPoint
from .recorder import Recording, end_index, plain_sequential

MAX_DENSE_KERNEL = 3  # identity convs after dense convs use at most 3x3 kernels

StackFactory = Callable[[], list[nn.Module]]


def _last_leaf(module: nn.Module) -> nn.Module:
    while plain_sequential(module) and len(module) > 0:
        module = module[-1]
    return module


def identity_point(model: nn.Module, name: str, rec: Recording) -> InsertionPoint | None:
    """The identity point after module ``name``, or None where no identity stack fits."""
    try:
        return identity_stack(model, name, rec)[0]
    except UnsupportedOpError:
        return None


def identity_stack(
    model: nn.Module, name: str, rec: Recording
) -> tuple[InsertionPoint, StackFactory]:
    """(point, factory) for identity layers after module ``name``; factory() builds a stack."""
    module = model.get_submodule(name)
    call = rec.calls.get(name)
    label = name or "<model>"
    if call is None:
        raise InvalidArgumentError(
            f"module {label!r} ({type(module).__name__}) is not called by forward on the example "
            "inputs, so nothing can be inserted after it; name a module that runs "
            "(see autogrow.insertion_points(model))"
        )
    y = call.output
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.ndim < 2:
        raise UnsupportedOpError(
            f"module {label!r} ({type(module).__name__}) returns "
            f"{type(y).__name__ if not isinstance(y, torch.Tensor) else f'a {y.ndim}-d tensor'}"
            ", not a floating (batch, features...) tensor, so identity layers cannot follow it; "
            "name a Linear, Conv or activation module instead"
        )
    feature_shapes = {(len(s), s[1], s[-1]) for s in call.shapes if s is not None}
    if len(feature_shapes) > 1 or None in call.shapes:
        raise UnsupportedOpError(
            f"module {label!r} ({type(module).__name__}) is called {call.calls} times with "
            "outputs of different shapes, and an inserted layer would see all of them; name a "
            "module that is called once"
        )
    kind, dims, source = _layout(module, name, y, rec)
    channels = y.shape[-1] if kind == "linear" else y.shape[1]
    uses_bn = any(isinstance(m, _bn_type(kind, dims, y)) for m in model.modules())
    last = _last_leaf(module)
    idempotent = isinstance(last, IDEMPOTENT_ACTIVATIONS)
    dtype, device = y.dtype, call.device
    per_channel = kind == "conv" or y.ndim == 2

    def factory() -> list[nn.Module]:
        layers: list[nn.Module] = []
        if kind == "linear":
            layers.append(identity_linear(channels, dtype=dtype, device=device))
        else:
            depthwise = (
                isinstance(source, CONV_LAYERS)
                and source.groups > 1
                and source.groups == source.in_channels
            )
            ks = source.kernel_size if isinstance(source, CONV_LAYERS) else 1
            if not depthwise:
                ks = tuple(min(k, MAX_DENSE_KERNEL) for k in ks) if isinstance(ks, tuple) else 1
            layers.append(
                identity_conv(channels, dims, ks, depthwise=depthwise, dtype=dtype, device=device)
            )
        if uses_bn:
            layers.append(identity_batchnorm(channels, max(dims, 1), dtype=dtype, device=device))
        if idempotent:
            layers.append(copy.deepcopy(last))
        else:
            layers.append(
                identity_prelu(channels if per_channel else 1, dtype=dtype, device=device)
            )
        return layers

    words = ", ".join(_describe(m) for m in factory())
    return InsertionPoint(name, InsertionKind.IDENTITY, words, not uses_bn), factory


def _bn_type(kind: str, dims: int, y: torch.Tensor) -> tuple[type, ...]:
    if kind == "conv":
        return ({1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims],)
    return (nn.BatchNorm1d,) if y.ndim == 2 else ()


def _layout(module: nn.Module, name: str, y: torch.Tensor, rec: Recording):
    """("linear" | "conv", spatial dims, the Linear/Conv that produced the features)."""
    if isinstance(module, nn.Linear):
        return "linear", 0, module
    if isinstance(module, CONV_LAYERS):
        return "conv", y.ndim - 2, module
    # the last Linear/Conv that ran before this module ended, if its width matches
    end = end_index(name, rec)
    for leaf in reversed(rec.order[:end]):
        m = rec.model.get_submodule(leaf)
        if isinstance(m, nn.Linear) and y.shape[-1] == m.out_features:
            return "linear", 0, m
        if isinstance(m, CONV_LAYERS) and y.ndim == m.weight.ndim and y.shape[1] == m.out_channels:
            return "conv", y.ndim - 2, m
        if isinstance(m, LINEAR_OR_CONV):
            break
    if 3 <= y.ndim <= 5 and any(isinstance(m, CONV_LAYERS) for m in rec.model.modules()):
        return "conv", y.ndim - 2, None
    return "linear", 0, None


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}, {m.out_features})=I"
    if isinstance(m, CONV_LAYERS):
        k = "x".join(map(str, m.kernel_size))
        dw = ", depthwise" if m.groups > 1 else ""
        return f"{type(m).__name__}({m.in_channels}, {m.out_channels}, {k}{dw})=I"
    if isinstance(m, nn.PReLU):
        return f"PReLU({m.num_parameters}, init=1)"
    if isinstance(m, FEATURE_NORMS):
        return f"{type(m).__name__}({norm_width(m)})=I(eval)"
    return type(m).__name__
