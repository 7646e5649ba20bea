"""Model-library adapters (see :class:`ModelAdapter`): the only place that knows a library.

The built-in registry (:func:`get_default_adapters`, built on first use) holds the Hugging Face
transformers adapter, which recognises models without importing transformers.
"""

from __future__ import annotations

from torch import nn

from ..axes.relations import Blame, Monomial, SizeRelations
from .base import AdapterRegistry, ApplyToModel, ModelAdapter, Undo

__all__ = [
    "AdapterRegistry",
    "ApplyToModel",
    "Blame",
    "ModelAdapter",
    "Monomial",
    "SizeRelations",
    "Undo",
    "adapter_for",
    "get_default_adapters",
]

_default: AdapterRegistry | None = None


def get_default_adapters() -> AdapterRegistry:
    """The shared registry of built-in adapters (register your own with ``.register``)."""
    global _default
    if _default is None:
        from .transformers import TransformersAdapter

        _default = AdapterRegistry([TransformersAdapter()])
    return _default


def adapter_for(model: nn.Module, registry: AdapterRegistry | None = None) -> ModelAdapter:
    """The adapter for ``model`` from ``registry`` (default: :func:`get_default_adapters`).

    >>> import torch
    >>> adapter_for(torch.nn.Linear(2, 2)).name
    'generic'
    """
    return (registry or get_default_adapters()).for_model(model)
