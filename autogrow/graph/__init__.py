"""The width graph: which tensor axes carry the same units (see :func:`analyze`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..adapters import adapter_for
from ..rules import RuleRegistry, get_default_registry
from ..tracing import prepare_inputs, trace
from ..tracing.trace import TracerKind, quiet_torch, trace_export
from .build import Analysis, build
from .width_graph import Member, WidthGraph, WidthGroup

__all__ = ["Analysis", "Member", "WidthGraph", "WidthGroup", "analyze", "analyze_traced"]


def analyze(
    model: nn.Module,
    example_inputs: tuple[Any, ...] | None = None,
    *,
    registry: RuleRegistry | None = None,
) -> WidthGraph:
    """Infer the width groups of ``model``: which axes must carry the same units.

    The model is traced (torch.fx, or torch.export where fx cannot follow the code) and run
    once in eval mode on ``example_inputs`` for shapes; its parameters and training flags are
    left as they were. Ops without a rule do not raise: they are listed in ``graph.blocked``
    and the axes they touch are frozen.

    Args:
        model: the model to analyse.
        example_inputs: the positional arguments of ``model.forward``, e.g. ``(x,)``. When
            None, they are inferred from the first ``Conv1d/2d/3d`` (a ``1×C×224(×224)``
            tensor), ``Linear`` (``1×in_features``) or ``Embedding`` (16 token ids).
        registry: the rules to use; None means ``autogrow.default_registry``.

    Returns:
        The :class:`WidthGraph`: width groups, blocked ops and the axis graph.

    Raises:
        InvalidArgumentError: ``model`` is not an ``nn.Module`` or ``example_inputs`` not a tuple.
        ExampleInputsError: no ``example_inputs`` and no entry layer to infer them from.
        TracingError: neither torch.fx nor torch.export could trace the model on these inputs.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
    ...                           torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    >>> graph = autogrow.analyze(net, (torch.randn(1, 3, 16, 16),))
    >>> graph.group("1").name, graph.group("1").width   # the BatchNorm names its conv's group
    ('0', 8)
    """
    inputs = prepare_inputs(model, example_inputs)
    return analyze_traced(model, inputs, registry or get_default_registry(), reference=False)


def analyze_traced(
    model: nn.Module, inputs: tuple, registry: RuleRegistry, *, reference: bool = True
) -> WidthGraph:
    """Trace and analyse; when fx had to block ops (functions it cannot look into, such as
    ``torch.fx.wrap``-ped helpers), also try torch.export and keep whichever frees more axes."""
    traced = trace(model, inputs, registry.leaf_types(), reference)
    analysis = build(traced, registry)
    if traced.kind == TracerKind.FX and analysis.blocked:
        try:
            with quiet_torch():
                alternative = build(trace_export(model, tuple(inputs)), registry)
        except Exception:  # noqa: BLE001 - the fx analysis stands
            alternative = None
        if alternative is not None and _free_axes(alternative) > _free_axes(analysis):
            alternative.traced.reference_output = traced.reference_output
            analysis = alternative
    adapter_for(model).constrain(analysis, model)
    return WidthGraph(analysis)


def _free_axes(analysis: Analysis) -> int:
    """How many parameter axes could widen: the measure for choosing between tracers."""
    store = analysis.store
    return sum(
        1
        for info in analysis.params.values()
        for t in info.terms
        if any(store.info(a).frozen is None for a in store.leaf_atoms(t))
    )
