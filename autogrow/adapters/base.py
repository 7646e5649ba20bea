"""The seam between autogrow's core and model libraries: :class:`ModelAdapter`.

The core (tracing, analysis, widen, deepen) names no model library. What a library needs beyond
the tensor graph (a config that must keep describing the grown model, settings for tracing, the
layer stacks that a config counts, layer types of its own) is said by one adapter, found for a
model by :class:`AdapterRegistry`. Every hook has a do-nothing default, so an adapter overrides
only what its library needs (in the spirit of Optuna's ``BaseSampler``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from torch import nn

from ..axes.relations import SizeRelations
from ..axes.terms import Term

if TYPE_CHECKING:  # the analysis is built above this layer; adapters only read it
    from ..rules.context import Analysis

Undo = Callable[[], None]
"""Restores what a hook changed on the model (run when verification fails)."""

ApplyToModel = Callable[[nn.Module], Undo]
"""Changes a grown model (config, size attributes) and returns how to undo that."""


def _nothing() -> None:
    return None


class ModelAdapter:
    """What autogrow must know about the models of one library. Override what applies.

    >>> import torch
    >>> class Tagged(ModelAdapter):
    ...     name = "tagged"
    ...     def matches(self, model):
    ...         return hasattr(model, "tag")
    >>> registry = AdapterRegistry([Tagged()])
    >>> net = torch.nn.Linear(2, 2)
    >>> registry.for_model(net).name
    'generic'
    >>> net.tag = 1
    >>> registry.for_model(net).name
    'tagged'
    """

    name = "generic"

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter speaks for ``model``."""
        return False

    @contextmanager
    def inference_context(self, model: nn.Module) -> Iterator[None]:
        """Settings for tracing and verification runs (e.g. no KV cache); restored after."""
        yield

    def constrain(self, analysis: Analysis, model: nn.Module) -> None:
        """State on ``analysis.store`` what the library can describe (freeze axes, add ties)
        before widths are planned."""

    def size_relations(self, model: nn.Module, analysis: Analysis) -> SizeRelations | None:
        """The numbers that describe ``model`` (a config's fields) as relations on the width
        groups of ``analysis``, for widen to plan under (None: nothing to respect)."""
        return None

    def unsettable_floats(
        self,
        model: nn.Module,
        attrs: list[tuple[str, str]],
        others: set[tuple[str, str]],
    ) -> str | None:
        """Why the library's description of ``model`` cannot state new values of these
        float module attributes ((module, attribute): the ``eps`` of the norms over one group
        that filled units rescale) while ``others`` (those of other filled groups) may change
        too and the rest keep theirs; None when it can (or when it describes no model)."""
        return None

    def prepare_widen(
        self,
        model: nn.Module,
        analysis: Analysis,
        new_size: Callable[[Term], int],
        new_shapes: dict[str, tuple[int, ...]],
    ) -> ApplyToModel | None:
        """Called before anything changes: raise ``ConstraintError`` if the library cannot
        describe the widened model, else return what to apply to the widened model (or None).
        ``new_size(term)`` is an axis's size after widening; ``new_shapes`` maps every parameter
        and buffer name of ``model`` to its shape after widening."""
        return None

    def check_grown(self, model: nn.Module, what: str) -> None:
        """Raise an ``AutogrowError`` if the library could not rebuild the grown ``model``
        (``what``: "widened" or "deepened"); called after the changes, before verification,
        so that a refusal is undone like a failed verification."""

    def layer_stacks(self, model: nn.Module) -> dict[str, str]:
        """Containers of identical layers whose length the library records: name → what
        records it (deepen appends there by default and keeps the record in step)."""
        return {}

    def after_deepen(
        self,
        model: nn.Module,
        stacks: dict[str, str],
        inserted: list[tuple[str, int | None, int]],
    ) -> Undo:
        """Keep the library's records in step after ``n`` layers were inserted at ``index`` of
        ``container`` for each ``(container, index, n)``; ``stacks`` as found before."""
        return _nothing

    def after_stack(
        self, model: nn.Module, stacks: dict[str, str], sources: dict[str, list[int]]
    ) -> Undo:
        """Keep the library's records in step after layer stacks were rebuilt from copies of
        their layers (``autogrow.stack``): ``sources[container][i]`` is the old index of the
        layer now at index ``i``; ``stacks`` as found before."""
        return _nothing

    def linear_width(self, module: nn.Module) -> int | None:
        """For a library layer that computes ``x @ W + b`` but is not an ``nn.Linear``: its
        output width (deepen may zero it to make a residual branch vanish); else None."""
        return None

    def branch_end_params(self, module: nn.Module) -> tuple[str, ...] | None:
        """For a library layer that is neither an ``nn.Linear`` nor a :meth:`linear_width`
        layer but outputs zeros once the named parameters are zero (a mixture of experts'
        stacked output projections, one matrix per expert): those parameters' names, which
        deepen may zero to make a residual branch vanish; else None."""
        return None


class AdapterRegistry:
    """The adapters the core consults, in order; the first that matches a model wins, and
    models no adapter matches get the do-nothing :class:`ModelAdapter`.

    >>> registry = AdapterRegistry()
    >>> import torch
    >>> registry.for_model(torch.nn.Linear(2, 2)).name
    'generic'
    """

    def __init__(self, adapters: list[ModelAdapter] | None = None) -> None:
        self.adapters: list[ModelAdapter] = list(adapters or [])

    def register(self, adapter: ModelAdapter, *, first: bool = True) -> None:
        """Add ``adapter`` (consulted before the others unless ``first=False``)."""
        if first:
            self.adapters.insert(0, adapter)
        else:
            self.adapters.append(adapter)

    def copy(self) -> AdapterRegistry:
        """An independent registry with the same adapters."""
        return AdapterRegistry(self.adapters)

    def for_model(self, model: Any) -> ModelAdapter:
        """The adapter that speaks for ``model``."""
        for adapter in self.adapters:
            if adapter.matches(model):
                return adapter
        return _GENERIC


_GENERIC = ModelAdapter()
