"""Per-op rules, and the registry that maps ops to them.

Each rule module (``linear``, ``norm``, ``shape`` ...) records its rules in a :class:`RuleSet`;
importing it changes no registry. :func:`build_default_registry` installs all of them into a new
:class:`RuleRegistry`; ``default_registry`` is one such registry, built on first use and shared
by :func:`autogrow.analyze`/``widen`` when no ``registry=`` is passed.

To support a new op, add one function to the module of its family (or a new module listed in
``_RULE_MODULES``); to support your own module type, see :func:`autogrow.register_module_rule`.
"""

from __future__ import annotations

from typing import Any

from . import (
    attention,
    elementwise,
    linear,
    norm,
    recurrent,
    reduce,
    shape,
    slicing,
    torchvision_ops,
)
from .context import COPY, REDUCE, TAPS, Analysis, Role, RuleContext
from .registry import Call, Dynamic, ParamRef, RuleRegistry, RuleSet, TensorValue

__all__ = [
    "COPY",
    "REDUCE",
    "TAPS",
    "Analysis",
    "Call",
    "Dynamic",
    "ParamRef",
    "Role",
    "RuleContext",
    "RuleRegistry",
    "RuleSet",
    "TensorValue",
    "build_default_registry",
    "default_registry",
    "get_default_registry",
]

# Installed in this order (a later module wins where two bind the same name).
_RULE_MODULES = (
    attention,
    elementwise,
    linear,
    norm,
    recurrent,
    reduce,
    shape,
    slicing,
    torchvision_ops,
)
_default: RuleRegistry | None = None


def build_default_registry() -> RuleRegistry:
    """A new registry holding every built-in rule (independent of ``default_registry``).

    >>> import torch
    >>> registry = build_default_registry()
    >>> registry.binding(torch.nn.functional.linear)[0]
    'linear'
    """
    registry = RuleRegistry()
    for module in _RULE_MODULES:
        module.rules.install(registry)
    return registry


def get_default_registry() -> RuleRegistry:
    """The shared default registry, built by :func:`build_default_registry` on first use."""
    global _default
    if _default is None:
        _default = build_default_registry()
    return _default


def __getattr__(name: str) -> Any:
    if name == "default_registry":  # built lazily, the first time someone asks for it
        return get_default_registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
