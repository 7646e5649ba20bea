"""Net2WiderNet for any traced model: analyse → plan widths → map units → copy → verify.

:func:`widen` is a thin wrapper of :func:`widen_with_plan`, which runs the shared grow skeleton
(:func:`autogrow.transforms.skeleton.grow`) with :class:`WidenTransform`'s parts and also
returns the frozen :class:`WidenPlan`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

import torch
from torch import fx, nn

from ..adapters import adapter_for
from ..errors import AutogrowError, ConstraintError, HardcodedSizeError, InvalidArgumentError
from ..graph import WidthGraph, analyze_traced
from ..graph.fill import filled_axes
from ..rules import RuleRegistry, get_default_registry
from ..rules.context import REDUCE, Analysis, LiteralSize
from ..rules.registry import Dynamic
from ..tracing.trace import TracerKind, parse_stack_trace
from ..verify import run
from ..verify import verify as verify_outputs
from .attributes import (
    AttributeProber,
    AttrSource,
    SubmoduleProbers,
    size_args,
    size_leaves,
    stack_frames,
)
from .axis_maps import AxisMap, grow_tensor, grown_tensors, param_axis_maps  # noqa: F401
from .literal_solve import Equation, KeepableLiteral, computed_size, key, solve_literals
from .mapping import SYMMETRIES, UnitMap, fill_map, new_size, sample_map, term_map
from .optimizer import grow_optimizer
from .paired_noise import DEFAULT_PAIR_NOISE, add_paired_noise, check_pair_noise
from .plan import Factor, check_factor, plan_widths, report_partial_growth
from .planned_sizes import PlannedSizes
from .skeleton import Grown, Transform, Undo, chain_undo, grow  # noqa: F401
from .structure import compare_graphs, fx_source, lazy_source, retrace
from .weight_norm import rescale_weight_norms


@overload
def widen(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = ...,
    seed: int | None = ...,
    symmetry: str = ...,
    noise: float = ...,
    pair_noise: float = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    registry: RuleRegistry | None = ...,
    optimizer: None = ...,
) -> nn.Module: ...


@overload
def widen(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = ...,
    seed: int | None = ...,
    symmetry: str = ...,
    noise: float = ...,
    pair_noise: float = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    registry: RuleRegistry | None = ...,
    optimizer: torch.optim.Optimizer,
) -> tuple[nn.Module, torch.optim.Optimizer]: ...


def widen(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    seed: int | None = None,
    symmetry: str = "split",
    noise: float = 0.0,
    pair_noise: float = DEFAULT_PAIR_NOISE,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    registry: RuleRegistry | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module | tuple[nn.Module, torch.optim.Optimizer]:
    """Return a wider model of the same class that computes the same function.

    Args:
        model: any ``nn.Module``; it is never modified unless ``inplace=True``.
        factor: a float > 1 widens every widenable group by that factor, rounded to each
            group's constraints; a dict maps group names or module names to a new width (int:
            for a module, its output width) or a factor (float).
        example_inputs: positional inputs for tracing and verification; inferred from the
            first Conv/Linear/Embedding when omitted.
        seed: seeds the random unit mappings and shares (None: a fresh random seed).
        symmetry: ``"split"`` divides each replicated unit's outgoing weights into unequal
            random shares (exact; replicas diverge in training); ``"none"`` divides equally;
            ``"paired"`` divides equally and then gives the ``k`` replicas noise that sums to
            zero over them for every weight (for ``k = 2``: ``+N`` and ``-N``; HyperCloning):
            exact and verified, and the replicas diverge in training.
        noise: if > 0, Gaussian noise of ``noise × std`` is added to replicated outgoing
            weights *after* verification, so the result is only approximately equal.
        pair_noise: ``symmetry="paired"`` only: each replica's noise is
            ``Normal(0, (pair_noise × std)²)``, ``std`` that of the grown weight tensor
            (ignored with the other symmetries).
        inplace: modify and return ``model`` itself (restored if verification fails).
        verify: compare outputs in eval mode and raise VerificationError beyond the tolerance.
        tolerance: the max relative error ``verify`` accepts; None: set by the model's dtype,
            1e-4 in float32, 8 × eps in float16/bfloat16 (``autogrow.verify.default_tolerance``).
        registry: rules to use instead of ``autogrow.rules.default_registry``.
        optimizer: a ``torch.optim`` optimizer whose state is shaped like the parameters (SGD,
            Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam, ...) over ``model``'s parameters;
            widen then returns ``(model, new_optimizer)``, the new optimizer over the new
            parameters with its state grown by the same mapping (docs/training-state.md).
            The given optimizer is left untouched, also with ``inplace=True``.

    Returns:
        The widened model (a deep copy, or ``model`` itself with ``inplace=True``) whose
        parameters, buffers and size attributes (``in_features``, ``out_channels``,
        ``num_features``, ``normalized_shape``, ``num_heads``, ...) are replaced; with
        ``optimizer``, the pair ``(model, optimizer)``.

    Raises:
        InvalidArgumentError: a factor that is not a finite number > 1, an unknown
            ``symmetry``, a negative ``noise`` or ``pair_noise``, a model that is not a module.
        GroupNotFoundError: a dict key names neither a width group nor a module in one.
        FrozenGroupError: a dict key names a frozen group (the message says why it is frozen).
        ConstraintError: a width the group's constraints do not allow (uniform groups need
            multiples, widths only grow), or nothing would change.
        HardcodedSizeError: ``forward`` writes a size as a literal that widening would change.
        VerificationError: the widened model differs from the original beyond the tolerance.
        TracingError, ExampleInputsError: as for :func:`autogrow.analyze`.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> wide = autogrow.widen(net, 2.0, seed=0)
    >>> wide[0].out_features, wide[2].in_features
    (16, 16)
    """
    return widen_with_plan(
        model,
        factor,
        example_inputs=example_inputs,
        seed=seed,
        symmetry=symmetry,
        noise=noise,
        pair_noise=pair_noise,
        inplace=inplace,
        verify=verify,
        tolerance=tolerance,
        registry=registry,
        optimizer=optimizer,
    ).returned()


@dataclass(frozen=True)
class WidenPlan:
    """What one :func:`widen` call decided: the new widths, the unit maps and its options.

    Attributes:
        factor: the ``factor`` argument (a float, or a read-only copy of the dict).
        widths: width group name → its new width, for every group that grows.
        maps: width group name → its :class:`~autogrow.transforms.mapping.UnitMap` (which old
            unit each new unit copies, and its share of the outgoing weights).
        seed: the seed of the unit mappings, shares and noise (drawn when ``seed=None``).
        symmetry: ``"split"``, ``"none"`` or ``"paired"``.
        noise: the noise scale added after verification (0: exact).
        pair_noise: the scale of ``symmetry="paired"``'s zero-sum noise (0 with the other
            symmetries: none was added).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> plan = widen_with_plan(net, 1.5, seed=3).plan
    >>> dict(plan.widths), plan.seed, plan.maps["0"].size
    ({'0': 12}, 3, 12)
    """

    factor: Factor
    widths: Mapping[str, int]
    maps: Mapping[str, UnitMap]
    seed: int
    symmetry: str
    noise: float
    pair_noise: float = 0.0


class WidenTransform(Transform[WidenPlan]):
    """widen's parts for :func:`~autogrow.transforms.skeleton.grow`: analyse, plan widths, map
    units, copy the grown tensors, add noise, grow the optimizer's state.

    >>> WidenTransform(2.0, seed=0).op
    'widen'
    """

    op = "widen"
    what = "widened"

    def __init__(
        self,
        factor: Factor,
        *,
        seed: int | None = None,
        symmetry: str = "split",
        noise: float = 0.0,
        pair_noise: float = DEFAULT_PAIR_NOISE,
        registry: RuleRegistry | None = None,
    ) -> None:
        _check_options(factor, symmetry, noise)
        pair_noise = check_pair_noise(pair_noise)
        self.factor, self.seed, self.symmetry, self.noise = factor, seed, symmetry, noise
        self.pair_noise = pair_noise if symmetry == "paired" else 0.0
        self.registry = registry

    def plan(self, model: nn.Module, inputs: tuple, *, verify: bool) -> tuple[WidenPlan, Any]:
        registry = self.registry or get_default_registry()
        graph = self.graph = analyze_traced(model, inputs, registry, reference=verify)
        adapter = adapter_for(model)
        graph.relations = adapter.size_relations(model, graph.analysis)
        rescaled = {(m, a) for f in graph.fills.values() for m, a, _, _ in f.eps}
        for gid, fill in list(graph.fills.items()):  # an eps the model's library cannot state
            why = adapter.unsettable_floats(model, [(m, a) for m, a, _, _ in fill.eps], rescaled)
            if why is not None:
                graph.drop_fill(gid, why)
        widths, attrs = plan_keeping_literals(graph, self.factor, inputs)
        self.widths = widths
        if self.seed is None:  # drawn up front so that the recipe records the seed actually used
            self.seed = random.SystemRandom().randrange(2**62)
        self.generator = torch.Generator().manual_seed(self.seed)
        # Uniform groups under a LayerNorm/RMSNorm that grow by other than whole multiples:
        # replicas plus filled units (docs/widen.md).
        self.filled = {
            gid: graph.fills[gid]
            for gid, n in widths.items()
            if gid in graph.fills and n % graph.by_id(gid).width
        }
        self.maps = {}
        for gid, n in sorted(widths.items()):
            old = graph.by_id(gid).width
            if gid in self.filled:
                self.maps[gid] = fill_map(old, n, symmetry=self.symmetry, generator=self.generator)
            else:
                self.maps[gid] = sample_map(
                    old,
                    n,
                    uniform=graph.by_id(gid).uniform is not None,
                    symmetry=self.symmetry,
                    generator=self.generator,
                )
        fills, eps = filled_axes(
            self.filled, {gid: (graph.by_id(gid).width, widths[gid]) for gid in self.filled}
        )
        self.axis_maps = param_axis_maps(graph.analysis, self.maps, fills)
        self.tensors = grown_tensors(graph.analysis, self.maps, self.axis_maps)
        if self.symmetry == "paired":  # before verification: the noise keeps the function
            add_paired_noise(self.tensors, self.axis_maps, self.pair_noise, self.generator)
        rescale_weight_norms(graph.analysis, self.tensors)
        self.attrs = attrs + eps
        names = {gid: graph.by_id(gid).name for gid in widths}
        factor = self.factor
        if isinstance(factor, Mapping):
            factor = MappingProxyType(dict(factor))
        plan = WidenPlan(
            factor,
            MappingProxyType({names[gid]: n for gid, n in widths.items()}),
            MappingProxyType({names[gid]: m for gid, m in self.maps.items()}),
            self.seed,
            self.symmetry,
            self.noise,
            self.pair_noise,
        )
        return plan, graph.analysis.traced.reference_output

    def prepare_adapter(self, model: nn.Module):
        # The model's library may have to describe the grown model (a config): raises before
        # any change.
        graph, widths = self.graph, self.widths
        return adapter_for(model).prepare_widen(
            model,
            graph.analysis,
            lambda term: new_size(graph.store, term, widths),
            _new_shapes(model, self.tensors),
        )

    def apply(self, model: nn.Module, *, inplace: bool) -> tuple[nn.Module, Undo]:
        self.old_params = dict(model.named_parameters(remove_duplicate=False))  # before edits
        return (_apply_inplace if inplace else _apply_copy)(model, self.tensors, self.attrs)

    def check_structure(self, model: nn.Module, result: nn.Module, inputs: tuple) -> None:
        # Sizes change, ops and every other constant must not: a branch on a size (kept by
        # torch.export as the example's path) or on an updated attribute shows here.
        traced = self.graph.analysis.traced
        new = retrace(result, traced.kind, inputs, traced.leaf_types, self.what)
        source = None
        if traced.kind == TracerKind.FX:
            source = lazy_source(lambda: fx_source(result, traced.leaf_types))

        # a difference is settled by running both models (two forwards, only then)
        def confirm() -> object:
            return verify_outputs(result, inputs, run(model, inputs), what=self.what)

        graph, widths = self.graph, self.widths
        planned = PlannedSizes(graph.analysis, lambda t: new_size(graph.store, t, widths))
        compare_graphs(
            traced.graph,
            new,
            self.what,
            sizes_may_change=True,
            source=source,
            confirm=confirm,
            sizes=planned,
        )

    def finish(self, result: nn.Module) -> None:
        report_partial_growth(self.graph, self.factor, self.widths)  # groups kept, once per call
        if self.noise > 0:
            _add_noise(result, self.graph.analysis, self.maps, self.noise, self.generator)

    def describe_module(self, name: str) -> str | None:
        # The widened groups with a layer in the failing module; for a module without layers
        # of its own (a reshape, a split), those of the nearest enclosing module that has some.
        scope = name
        while True:
            prefix = f"{scope}." if scope else ""
            groups = [
                g
                for g in self.graph.groups
                if g.id in self.widths
                and any(m == scope or m.startswith(prefix) for m in g.modules)
            ]
            if groups or not scope:
                break
            scope = scope.rpartition(".")[0]
        if not groups:
            return None
        shown = ", ".join(f"{g.name!r} ({g.width} -> {self.widths[g.id]})" for g in groups[:4])
        enclosing = f"module {scope!r}" if scope else "the model"
        where = "" if scope == name else f" (widened in {enclosing})"
        return f"in width group(s) {shown}{where}"

    def recipe_args(self) -> dict[str, Any]:
        factor = dict(self.factor) if isinstance(self.factor, Mapping) else self.factor
        return {
            "factor": factor,
            "seed": self.seed,
            "symmetry": self.symmetry,
            "noise": self.noise,
            "pair_noise": self.pair_noise,
            "custom_registry": self.registry is not None,
        }

    def grow_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, result: nn.Module
    ) -> torch.optim.Optimizer:
        return grow_optimizer(optimizer, self.old_params, result, self.axis_maps)


def widen_with_plan(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    seed: int | None = None,
    symmetry: str = "split",
    noise: float = 0.0,
    pair_noise: float = DEFAULT_PAIR_NOISE,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    registry: RuleRegistry | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Grown[WidenPlan]:
    """:func:`widen`, returning a :class:`~autogrow.transforms.skeleton.Grown`: the wider
    model, the :class:`WidenPlan` (new widths, unit maps, the seed actually used, options)
    and, when ``optimizer`` is given, the grown optimizer (else None). Arguments, errors and
    the model as for :func:`widen`.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> grown = widen_with_plan(net, 2.0)
    >>> grown.model[0].out_features, dict(grown.plan.widths), isinstance(grown.plan.seed, int)
    (16, {'0': 16}, True)
    """
    transform = WidenTransform(
        factor,
        seed=seed,
        symmetry=symmetry,
        noise=noise,
        pair_noise=pair_noise,
        registry=registry,
    )
    return grow(
        model,
        transform,
        example_inputs=example_inputs,
        inplace=inplace,
        verify=verify,
        tolerance=tolerance,
        optimizer=optimizer,
    )


def _new_shapes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer name of ``model`` (tied names included) → its grown shape."""
    named = _named_tensors(model)
    grown = {id(named[n]): t.shape for n, t in tensors.items() if n in named}
    return {n: tuple(grown.get(id(t), t.shape)) for n, t in named.items()}


def _check_options(factor: Any, symmetry: str, noise: float) -> None:
    if not isinstance(factor, Mapping):
        check_factor(factor)
    if symmetry not in SYMMETRIES:
        raise InvalidArgumentError(f"symmetry must be one of {SYMMETRIES}, got {symmetry!r}")
    if (
        isinstance(noise, bool)
        or not isinstance(noise, (int, float))
        or not math.isfinite(noise)
        or noise < 0
    ):
        raise InvalidArgumentError(f"noise must be a finite number >= 0, got {noise!r}")


def plan_keeping_literals(
    graph: WidthGraph, factor: Factor, inputs: tuple | None = None
) -> tuple[dict[int, int], list[tuple[str, str, Any]]]:
    """:func:`~autogrow.transforms.plan.plan_widths` and :func:`attribute_updates`. A literal
    size whose attributes cannot follow the plan (:class:`KeepableLiteral`) keeps its groups
    at their width (frozen, saying why) and the widths are planned again, so the rest grows
    exactly; its HardcodedSizeError is raised when nothing else would grow, and with a dict
    ``factor`` (the caller chose the groups)."""
    cache: dict[str, Any] = {}
    error: KeepableLiteral | None = None
    while True:
        try:
            widths = plan_widths(graph, factor)
        except AutogrowError:
            if error is not None:
                raise error from None
            raise
        try:
            return widths, attribute_updates(graph, widths, inputs, cache)
        except KeepableLiteral as e:
            if isinstance(factor, Mapping) or not e.groups:
                raise
            error = e
            for gid, why in e.groups.items():
                graph.keep_width(gid, why)


def attribute_updates(
    graph: WidthGraph,
    widths: dict[int, int],
    inputs: tuple | None = None,
    cache: dict[str, Any] | None = None,
) -> list[tuple[str, str, Any]]:
    """(module, attribute, new value) for every size attribute that forward code reads.

    The rules' attribute bindings come first. A literal size that widening would change is
    traced back to the attribute the forward code read by probing
    (:class:`~autogrow.transforms.attributes.AttributeProber`, fx traces only); the attribute
    gets the value that makes the literal the new size, and one more symbolic trace checks
    that every literal then follows its axis and nothing else moved. A literal with no
    attribute behind it raises HardcodedSizeError naming the source line; one whose
    attributes cannot follow (no integer value fits, two equally simple choices, the check
    fails) raises :class:`~autogrow.transforms.literal_solve.KeepableLiteral`, naming the
    groups to keep at their width. ``inputs`` (the example inputs) let a module of an exported
    graph that fx cannot trace alone be traced with the values of its arguments that are no
    tensors. ``cache`` keeps the probers (and their traces) for a next call on the same graph
    with other widths.
    """
    analysis, store = graph.analysis, graph.store
    model = analysis.traced.model

    def size(term: Any) -> int:
        return new_size(store, term, widths)

    updates: dict[tuple[str, str], Any] = {}

    def put(module: str, attr: str, value: Any, why: str) -> None:
        old = updates.get((module, attr))
        if old is not None and old != value:
            raise ConstraintError(
                f"module {module!r} attribute {attr!r} would need two values ({old} and {value}) "
                f"after widening ({why}); exclude one of its groups from widening"
            )
        updates[(module, attr)] = value

    def refuse(lit: LiteralSize, new: int, advice: str) -> HardcodedSizeError:
        groups = sorted({g.name for a in store.leaf_atoms(lit.term) if (g := graph.by_id(a.id))})
        return HardcodedSizeError(
            f"{lit.call.where(full=True)} hard-codes the size {lit.value}, which becomes "
            f"{new} when group(s) {', '.join(groups) or '?'} widen. {advice}"
        )

    def keepable(stuck: list[tuple[LiteralSize, int, str]], read: list = ()) -> KeepableLiteral:  # type: ignore[assignment]
        """The error of the first literal; keeping the groups of all of them (and of the axes
        ``read`` to compute one) at their width keeps each as it is."""
        lit, new, why = stuck[0]
        error = refuse(lit, new, f"{why} Leave those groups out.")
        kept: dict[int, str] = {}
        for lit, _, why in stuck:
            for a in [*store.leaf_atoms(lit.term), *(x for t in read for x in store.leaf_atoms(t))]:
                if a.id in widths and widths[a.id] != a.size:
                    kept.setdefault(a.id, f"{lit.call.where()} sizes it: {why}")
        return KeepableLiteral(str(error), kept)

    for b in analysis.attrs:
        put(b.module, b.attr, b.compute(size), f"{b.module}.{b.attr}")
    blocking: list[tuple[LiteralSize, int]] = []
    computed: list[tuple[LiteralSize, int, Any, list]] = []  # run-time sizes that go wrong
    soft: list[tuple[LiteralSize, int]] = []
    probers = SubmoduleProbers(analysis.traced, inputs)
    for lit in analysis.literals:
        new = size(lit.term)
        if not isinstance(lit.value, int):  # sized from another axis: the sizes must agree
            other = size(lit.value)
            if new != other:
                raise ConstraintError(
                    f"{lit.call.where(full=True)} sizes an axis from another tensor's size, "
                    "which would be "
                    f"{other} while this axis becomes {new}. Widen the groups involved by the "
                    "same factor (a float factor does), or leave them out."
                )
            continue
        arg = _size_arg(lit)
        if isinstance(arg, fx.Node) or lit.computed:  # computed at run time: it must give
            read: list = []  # the new size
            value = computed_size(arg, analysis.values, size, read)
            if value is not None and value != new:
                computed.append((lit, new, arg, read))  # attributes may still fix it
            if value is not None or lit.computed:
                continue
        if new == lit.value:
            continue
        (soft if lit.soft else blocking).append((lit, new))
    # ``C // self.num_heads`` sizing a view: the rules froze the head size and tied the heads
    # to ``C``, so with the updated attributes it must still compute the old size
    quotients = [
        (node, int(v))
        for node, v in analysis.values.items()
        if isinstance(v, Dynamic) and v.quotient is not None and _sizes_a_view(node, analysis.calls)
    ]
    items: dict[tuple[str, str, int | None], tuple[int, str]] = {}

    def evaluate(leaves: Any) -> tuple[list[tuple[str, str]], set[str]]:
        """The computed sizes that do not give their new size with the numbers of a trace
        (node name → sizes), and the arithmetic nodes that were evaluated."""
        problems, seen = [], set()
        for lit, new, arg, _ in computed:
            value = computed_size(arg, analysis.values, size, [], leaves, seen)
            if value != new:
                name = lit.call.node.name
                problems.append((name, f"op {name!r} computes the size {value}, not {new}"))
        for node, head in quotients:  # a head's size the rules froze: it must stay
            value = computed_size(node, analysis.values, size, [], leaves, seen)
            if value != head:
                problems.append(
                    (node.name, f"op {node.name!r} computes the size {value}, not {head}")
                )
        return problems, seen

    def computed_error(first: str) -> KeepableLiteral:
        lit, new, _, read = computed[0]
        why = (
            "It is computed at run time from sizes that widening changes, and would not "
            f"be {new}: {first}."
        )
        return keepable(
            [(lit, new, why) for lit, new, _, _ in computed], [t for *_, r in computed for t in r]
        )

    def keep(src: AttrSource, value: int, lit: LiteralSize) -> None:
        key = (src.module, src.attr, src.index)
        old = items.get(key)
        if old is not None and old[0] != value:
            raise ConstraintError(
                f"attribute {src.name} would need two values ({old[0]} and {value}) after "
                f"widening ({old[1]} and {lit.call.where()}); exclude one of its groups from "
                "widening"
            )
        items[key] = (value, lit.call.where())

    for lit, new in soft:  # an exported graph: probe the module that wrote it, traced alone
        src = _soft_source(lit, probers)
        if isinstance(src, str):  # the line where fx sees the number written
            raise refuse(lit, new, f"The number is written at {src}. {lit.advice(model)}")
        value = src.solve(new) if isinstance(src, AttrSource) else None
        if isinstance(src, AttrSource) and value is not None:
            keep(src, value, lit)
            continue
        found = _attribute_for_literal(model, lit.call.node, lit.value)
        if found is not None:
            put(found[0], found[1], new, lit.call.where())
        # else probably computed from a shape at run time; verification will tell
    if not blocking:
        if computed:
            raise computed_error(evaluate(None)[0][0][1])
        _apply_items(model, items, updates, put)
        return [(m, a, v) for (m, a), v in updates.items()]
    bound = [(m, a, v) for (m, a), v in updates.items()]

    cache = {} if cache is None else cache
    prober = cache.get("prober") or cache.setdefault("prober", AttributeProber.of(analysis.traced))
    # what the checking trace must show: each literal at its new size (a literal whose
    # position among the op's sizes is unknown: at one of the places that hold its value)
    expected: dict[tuple[str, int], set[int]] = {}
    required: list[tuple[str, list[int], int]] = []
    for lit in analysis.literals:
        if not isinstance(lit.value, int) or lit.soft or lit.computed:
            continue  # (a size computed at run time: ``evaluate`` checks it)
        if isinstance(_size_arg(lit), fx.Node):
            continue
        name = lit.call.node.name
        if lit.index is not None:
            expected.setdefault((name, lit.index), set()).add(size(lit.term))
            continue
        leaves = prober.base.get(name, (None, None, ()))[2]
        places = [i for i, v in enumerate(leaves) if type(v) is int and v == lit.value]
        for i in places:
            expected.setdefault((name, i), set()).update({lit.value, size(lit.term)})
        if size(lit.term) != lit.value:
            required.append((name, places, size(lit.term)))
    # The cheap guess first: each literal is the one int attribute of that value on the
    # modules that wrote it. One checking trace tells whether that is right; probe if not.
    guess = _guess_by_value(model, blocking, updates)
    check = evaluate if computed or quotients else None
    if guess is not None and prober.check(guess, expected, bound, required, check) is None:
        return guess
    equations = []
    for lit, new in blocking:
        found = prober.sources(lit.call.node, lit.value, lit.index)
        if not found:
            raise refuse(lit, new, lit.advice(model))
        equations.append(Equation(tuple(found), lit.value, new))
    # several literals can follow one attribute, one literal several (``dim - pdim``): one
    # linear system; the attributes the rules bound are fixed in it
    fixed = {(m, a, None): v for (m, a), v in updates.items() if type(v) is int}
    values, unsolved = solve_literals(equations, fixed)
    if unsolved:
        raise keepable([(*blocking[i], why) for i, why in unsolved.items()])
    for k, value in values.items():
        i = next(i for i, eq in enumerate(equations) if k in map(key, eq.sources))
        items[k] = (value, blocking[i][0].call.where())
    _apply_items(model, items, updates, put)
    result = [(m, a, v) for (m, a), v in updates.items()]
    problem = prober.check(result, expected, bound, required, check)
    if problem is not None:
        # the literals whose attributes move the ops found wrong keep their axes (all of
        # them when the probes do not tell)
        movers = prober.movers(prober.failed, list(values))
        stuck = [i for i, eq in enumerate(equations) if movers & set(map(key, eq.sources))]
        changed = ", ".join(sorted({f"{m}.{a}" if m else a for m, a, _ in items}))
        why = (
            f"Updating the attributes it comes from ({changed}) does not keep the model "
            f"consistent: {problem}."
        )
        wrong = [c for c in computed if c[0].call.node.name in prober.failed]
        if wrong and not stuck:
            computed[:] = wrong
            raise computed_error(problem)
        raise keepable([(*blocking[i], why) for i in stuck or range(len(blocking))])
    return result


def _sizes_a_view(node: fx.Node, calls: Mapping[fx.Node, Any]) -> bool:
    """Whether the view rule (the one that ties a quotient to its heads) reads ``node``."""
    return any(getattr(calls.get(u), "name", None) == "view" for u in node.users)


def _size_arg(lit: LiteralSize) -> Any:
    """The argument of the literal's op at its position (a node: computed at run time)."""
    if lit.index is None or lit.soft:
        return None
    args = size_args(lit.call.node)
    return args[lit.index] if lit.index < len(args) else None


def _apply_items(model: nn.Module, items: dict, updates: dict, put: Any) -> None:
    """Fold the probed (module, attr, index) → value into ``updates`` (tuples rebuilt)."""
    for (module, attr, index), (value, why) in items.items():
        if index is not None:
            current = updates.get((module, attr), getattr(model.get_submodule(module), attr))
            items_now = list(current)
            items_now[index] = value
            updates[(module, attr)] = type(current)(items_now)
        else:
            put(module, attr, value, why)


def _guess_by_value(
    model: nn.Module, blocking: list[tuple[LiteralSize, int]], updates: dict
) -> list[tuple[str, str, Any]] | None:
    """``updates`` plus, for each blocking literal, the single int attribute that holds its
    value (set to the new size); None where a literal has no such attribute or two literals
    disagree. Only a guess: :meth:`AttributeProber.check` decides."""
    guess = dict(updates)
    for lit, new in blocking:
        found = _attribute_for_literal(model, lit.call.node, lit.value)
        if found is None or guess.get(found, new) != new:
            return None
        guess[found] = new
    return [(m, a, v) for (m, a), v in guess.items()]


def _soft_source(lit: LiteralSize, probers: SubmoduleProbers) -> Any:
    """The attribute behind a literal of an exported graph: the modules that wrote it
    (innermost first) are traced alone with fx, the literal is found again by its source line,
    and probed. The source line (a str) when fx shows the very number written in the code
    and no attribute moves it; None when that cannot be told (no submodule traces, the number is
    computed from a shape, several attributes move it, or a number may be an argument's value
    fixed for the trace)."""
    frames = stack_frames(lit.call.node.meta.get("stack_trace"))
    if not frames or lit.index is None:
        return None
    stack = [str(p) for p, _ in (lit.call.node.meta.get("nn_module_stack") or {}).values()]
    for path in reversed(stack):
        prober = probers.get(path)
        if prober is None:
            continue
        sizes = size_leaves(lit.call.node)
        if lit.index >= len(sizes) or sizes[lit.index] != lit.value:
            return None
        nodes = prober.nodes_at(frames, sizes, lit.index)
        found = {s for node in nodes for s in prober.sources(node, lit.value, lit.index)}
        if not found and nodes and not prober.fixed:
            text = nodes[0].meta.get("stack_trace")
            return (parse_stack_trace(text) if text else None) or "a line of the model's code"
        if len(found) != 1:
            return None
        (src,) = found
        full = ".".join(p for p in (path, src.module) if p)
        return dataclasses.replace(src, module=full)
    return None


def _attribute_for_literal(model: nn.Module, node: Any, value: int) -> tuple[str, str] | None:
    """An int attribute equal to ``value`` on the modules whose forward wrote the literal (in
    an exported graph, which cannot be probed; verification decides)."""
    stack = [str(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    for path in [*reversed(stack), ""]:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        names = [
            k
            for k, v in vars(module).items()
            if not k.startswith("_") and type(v) is int and v == value
        ]
        if len(names) == 1:
            return path, names[0]
        if names:
            return None  # ambiguous: several attributes hold that value
    return None


def _locate(model: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    module_name, _, attr = qualname.rpartition(".")
    return model.get_submodule(module_name), attr


def _new_value(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    module, attr = _locate(model, name)
    old = module._parameters.get(attr)
    if old is not None:
        return nn.Parameter(tensor, requires_grad=old.requires_grad)
    return tensor


def _set(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, attr = _locate(model, name)
    if attr in module._parameters:
        module._parameters[attr] = value  # type: ignore[assignment]
    else:
        module._buffers[attr] = value


def _apply_copy(model: nn.Module, tensors: dict[str, torch.Tensor], attrs: list) -> tuple:
    originals = _named_tensors(model)
    # Pre-seeding deepcopy's memo puts the new tensors in place without copying the old ones.
    memo = {id(originals[n]): _new_value(model, n, t) for n, t in tensors.items()}
    result = copy.deepcopy(model, memo)
    for module, attr, value in attrs:
        setattr(result.get_submodule(module), attr, value)
    return result, lambda: None


def _apply_inplace(model: nn.Module, tensors: dict[str, torch.Tensor], attrs: list) -> tuple:
    originals = _named_tensors(model)
    # Every name of a tied tensor (an output head tied to the input embedding) gets the new one.
    aliases = {n: [a for a, t in originals.items() if t is originals[n]] for n in tensors}
    old_attrs = [(m, a, getattr(model.get_submodule(m), a)) for m, a, _ in attrs]
    for name, t in tensors.items():
        value = _new_value(model, name, t)
        for alias in aliases[name]:
            _set(model, alias, value)
    for module, attr, value in attrs:
        setattr(model.get_submodule(module), attr, value)

    def undo() -> None:
        for name in tensors:
            for alias in aliases[name]:
                _set(model, alias, originals[name])
        for module, attr, value in old_attrs:
            setattr(model.get_submodule(module), attr, value)

    return model, undo


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    return named


def _add_noise(
    model: nn.Module,
    analysis: Analysis,
    maps: dict[int, UnitMap],
    noise: float,
    gen: torch.Generator,
) -> None:
    store = analysis.store
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, info in analysis.params.items():
            p = params.get(name)
            if p is None or not p.is_floating_point():
                continue
            for d, term in enumerate(info.terms):
                if REDUCE not in info.roles[d] or not any(
                    a.id in maps for a in store.leaf_atoms(term)
                ):
                    continue
                m = term_map(store, term, maps)
                # filled units (docs/widen.md) are no replicas: they leave their source alone
                copies = m.source if m.filled is None else m.source[~m.filled]
                counts = torch.bincount(copies, minlength=int(m.source.max()) + 1)
                replicated = (counts[m.source] > 1).to(p.dtype)
                if m.filled is not None:
                    replicated[m.filled] = 0
                shape = [1] * p.ndim
                shape[d] = -1
                scale = noise * float(p.std()) if p.numel() > 1 else noise
                draw = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.add_(draw * replicated.view(shape) * scale)
