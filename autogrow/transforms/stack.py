"""Depthwise stacking (G_stack, NeurIPS 2024): a deeper model made of copies of trained layers.

:func:`stack` finds the model's layer stacks (a library's, e.g. a transformers model's
``model.layers`` that its config counts; else, in every ``nn.Sequential``/``nn.ModuleList``,
the longest run of identically structured blocks that keep their input's shape) and rebuilds
each from copies of its trained layers: ``order="repeat"`` puts the whole stack ``factor``
times in a row (``L1..Ln, L1..Ln``; the order G_stack found best), ``"interleave"`` repeats each
layer in place (``L1, L1, L2, L2, ...``).

Stacking does **not** preserve the function. It runs the shared grow skeleton
(:func:`autogrow.transforms.skeleton.grow`) like ``widen`` and ``deepen`` (copy or in place,
the library's records kept in step, the lineage step recorded, the optimizer grown), but its
check measures the output change instead of bounding it: the grown model must run and give
outputs of the original's shapes, and :attr:`StackPlan.output_change` reports the max relative
change in eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, overload

import torch
from torch import nn

from ..adapters import adapter_for
from ..errors import InvalidArgumentError, UnsupportedOpError, VerificationError
from ..rules import RuleRegistry
from ..verify import measure
from .depth.recorder import Recording, hidden, is_container
from .optimizer import copy_optimizer
from .skeleton import Grown, Transform, Undo, grow

__all__ = ["ORDERS", "StackPlan", "StackTransform", "stack", "stack_with_plan"]

ORDERS = ("repeat", "interleave")


@dataclass(frozen=True)
class StackPlan:
    """What one :func:`stack` call did.

    Attributes:
        factor: each stack is ``factor`` times as deep afterwards.
        order: ``"repeat"`` (``L1..Ln, L1..Ln``) or ``"interleave"`` (``L1, L1, L2, L2, ...``).
        stacks: the containers whose layers were stacked (``nn.ModuleList``/``nn.Sequential``
            names), in model order.
        old_depth: the number of stacked layers before, over all stacks.
        new_depth: the number after (``factor × old_depth``).
        sources: per stack, for each of its children now, the index of the child (before) it
            is a copy of (children outside the stacked run map to themselves).
        output_change: the max relative change of the outputs in eval mode on the example
            inputs (:func:`autogrow.verify.relative_error`); NaN with ``verify=False``.

    >>> import torch
    >>> blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    ...                                for _ in range(2)])
    >>> plan = stack_with_plan(torch.nn.Sequential(torch.nn.Linear(3, 4), blocks), 2).plan
    >>> plan.stacks, plan.old_depth, plan.new_depth, plan.sources["1"]
    (('1',), 2, 4, (0, 1, 0, 1))
    """

    factor: int
    order: str
    stacks: tuple[str, ...]
    old_depth: int
    new_depth: int
    sources: Mapping[str, tuple[int, ...]]
    output_change: float = math.nan


@dataclass(frozen=True)
class _Run:
    """Children ``start:stop`` of container ``container`` are the layers to stack."""

    container: str
    start: int
    stop: int


def check_stack_options(factor: Any, order: Any) -> None:
    """Raise InvalidArgumentError unless ``factor`` is an int >= 2 and ``order`` is known.

    >>> check_stack_options(2, "repeat")
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise InvalidArgumentError(
            f"stack: factor must be an int >= 2 (each layer stack becomes factor times as "
            f"deep), got {factor!r}"
        )
    if order not in ORDERS:
        raise InvalidArgumentError(f"stack: order must be one of {ORDERS}, got {order!r}")


def new_order(n: int, factor: int, order: str) -> list[int]:
    """For a run of ``n`` layers: which old layer each of the ``factor × n`` new ones copies.

    >>> new_order(3, 2, "repeat"), new_order(3, 2, "interleave")
    ([0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2])
    """
    if order == "repeat":
        return list(range(n)) * factor
    return [i for i in range(n) for _ in range(factor)]


def _signature(module: nn.Module) -> tuple:
    state = module.state_dict()
    return (type(module), tuple((k, tuple(v.shape), v.dtype) for k, v in state.items()))


def _keeps_shape(name: str, rec: Recording) -> bool:
    """Called once, with parameters, and its (first) output has its first input's shape."""
    call = rec.calls.get(name)
    if call is None or call.calls != 1:
        return False
    x = call.args[0] if call.args else None
    y = hidden(call.output)
    return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape


def _library_run(model: nn.Module, name: str, rec: Recording) -> _Run | None:
    """A library's layer stack from its first layer that keeps its input's shape: a stage's
    leading downsampling layer is not copied (the library builds the added layers without
    it); None when every layer changes the shape (a stage of one downsampling layer)."""
    container = model.get_submodule(name)
    prefix = f"{name}." if name else ""
    start = 0
    for key in container._modules:
        call = rec.calls.get(prefix + key)
        x = call.args[0] if call is not None and call.args else None
        y = hidden(call.output) if call is not None else None
        changes = isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape != y.shape
        if not changes:
            break
        start += 1
    return _Run(name, start, len(container)) if start < len(container) else None


def _run_in(model: nn.Module, name: str, rec: Recording) -> _Run | str:
    """The longest run of identically structured, shape-keeping children of container
    ``name`` (the last one on a tie), or why there is none."""
    container = model.get_submodule(name)
    keys = list(container._modules)
    prefix = f"{name}." if name else ""
    ok = [
        any(True for _ in child.parameters()) and _keeps_shape(prefix + key, rec)
        for key, child in container._modules.items()
    ]
    best: tuple[int, int] | None = None
    i = 0
    while i < len(keys):
        if not ok[i]:
            i += 1
            continue
        j, sig = i + 1, _signature(container._modules[keys[i]])
        while j < len(keys) and ok[j] and _signature(container._modules[keys[j]]) == sig:
            j += 1
        if best is None or j - i >= best[1] - best[0]:
            best = (i, j)
        i = j
    if best is None:
        return (
            "none of its children is a block that has parameters, runs once and returns a "
            "tensor of its input's shape"
        )
    start, stop = best
    first = container._modules[keys[start]]
    # One block alone (a residual stage after its downsampling block) is a stack of one; a
    # lone leaf layer or container is not (the container's own layers are looked at instead).
    if stop - start < 2 and (is_container(first) or not any(True for _ in first.children())):
        return "it has no two identical blocks in a row, and a single layer is not a block"
    return _Run(name, start, stop)


def find_runs(model: nn.Module, rec: Recording, names: Sequence[str] | None) -> list[_Run]:
    """The layer stacks to copy: ``names`` (containers), else the library's layer stacks,
    else every outermost container with a run of identical blocks."""
    library = adapter_for(model).layer_stacks(model)
    if names is None and library:
        found = [_library_run(model, n, rec) for n in library]
        return [r for r in found if r is not None]
    runs: list[_Run] = []
    candidates = (
        names if names is not None else [n for n, m in model.named_modules() if is_container(m)]
    )
    for name in candidates:
        label = name or "<model>"
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise InvalidArgumentError(
                f"stack: {type(model).__name__} has no submodule {name!r} (stacks= names "
                "nn.Sequential/nn.ModuleList containers of the model)"
            ) from None
        if not is_container(module):
            raise UnsupportedOpError(
                f"stack: module {label!r} is a {type(module).__name__}, not an nn.Sequential "
                "or nn.ModuleList of layers; name the container that holds the layers"
            )
        if names is None and any(name.startswith(f"{r.container}.") for r in runs):
            continue  # inside a stack already found: copied with it
        if name in library:  # a library's stack (named, or replayed by load): all its layers
            library_run = _library_run(model, name, rec)
            if library_run is not None:
                runs.append(library_run)
            continue
        run = _run_in(model, name, rec)
        if isinstance(run, _Run):
            runs.append(run)
        elif names is not None:
            raise UnsupportedOpError(f"stack: module {label!r} has no layers to stack: {run}")
    if not runs:
        raise UnsupportedOpError(
            f"stack: {type(model).__name__} has no layer stack to copy. stack copies the "
            "layers of an nn.Sequential/nn.ModuleList whose children are identically "
            "structured blocks that keep their input's shape (residual blocks, transformer "
            "layers), and found none on the example inputs; use autogrow.deepen to add "
            "identity layers instead"
        )
    return runs


class StackTransform(Transform[StackPlan]):
    """stack's parts for :func:`~autogrow.transforms.skeleton.grow`: find the layer stacks,
    rebuild them from copies, measure the output change, copy the optimizer state.

    >>> StackTransform(2).op
    'stack'
    """

    op = "stack"
    what = "stacked"

    def __init__(
        self, factor: int, *, order: str = "repeat", stacks: Sequence[str] | str | None = None
    ) -> None:
        check_stack_options(factor, order)
        if isinstance(stacks, str):
            stacks = [stacks]
        if stacks is not None:
            stacks = list(stacks)
            if not stacks or not all(isinstance(s, str) for s in stacks):
                raise InvalidArgumentError(
                    f"stack: stacks must be None or container names, got {stacks!r}"
                )
        self.factor, self.order, self.names = factor, order, stacks
        self.change = math.nan

    def plan(self, model: nn.Module, inputs: tuple, *, verify: bool) -> tuple[StackPlan, Any]:
        rec = Recording(model, inputs)
        self.runs = find_runs(model, rec, self.names)
        self.sources: dict[str, list[int]] = {}
        for r in self.runs:
            n = len(model.get_submodule(r.container))
            inner = [r.start + i for i in new_order(r.stop - r.start, self.factor, self.order)]
            self.sources[r.container] = [*range(r.start), *inner, *range(r.stop, n)]
        old = sum(r.stop - r.start for r in self.runs)
        plan = StackPlan(
            self.factor,
            self.order,
            tuple(r.container for r in self.runs),
            old,
            old * self.factor,
            MappingProxyType({k: tuple(v) for k, v in self.sources.items()}),
        )
        return plan, rec.output

    def prepare_adapter(self, model: nn.Module):
        adapter = adapter_for(model)
        stacks = adapter.layer_stacks(model)
        sources = {k: v for k, v in self.sources.items() if k in stacks}
        return lambda result: adapter.after_stack(result, stacks, sources)

    def apply(self, model: nn.Module, *, inplace: bool) -> tuple[nn.Module, Undo]:
        self.old_params = list(model.parameters())  # before an in-place change adds layers
        self.memo: dict[int, Any] = {}
        result = model if inplace else copy.deepcopy(model, self.memo)
        self.clones: dict[int, torch.Tensor] = {}  # id(copied parameter) -> its source's
        saved = []
        for r in self.runs:
            container = result.get_submodule(r.container)
            saved.append((container, dict(container._modules)))
            _restack(container, self.sources[r.container], self.clones)

        def undo() -> None:
            for container, modules in saved:
                container._modules.clear()
                container._modules.update(modules)

        return result, undo

    def check(
        self, result: nn.Module, inputs: tuple, reference: Any, *, tolerance: float | None
    ) -> None:
        self.change = measure(
            result, inputs, reference, what=self.what, describe_module=self.describe_module
        ).max_error
        if tolerance is not None and not self.change <= tolerance:
            raise VerificationError(
                f"the stacked model's outputs changed by {self.change:.3g} (max relative "
                f"change), more than tolerance={tolerance:g}; stacking does not preserve the "
                "function: pass tolerance=None to accept any change. Nothing was returned."
            )

    def describe_module(self, name: str) -> str | None:
        for r in self.runs:
            if name == r.container or name.startswith(f"{r.container}." if r.container else ""):
                n = r.stop - r.start
                return (
                    f"in layer stack {r.container or '<model>'!r} ({n} -> {n * self.factor} layers)"
                )
        return None

    def recipe_args(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "order": self.order,
            "stacks": [r.container for r in self.runs],
        }

    def grow_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, result: nn.Module
    ) -> torch.optim.Optimizer:
        copies = {id(p): self.memo.get(id(p), p) for p in self.old_params}
        old_of = {id(q): p for p in self.old_params if (q := copies[id(p)]) is not None}
        clones = {k: old_of.get(id(src), src) for k, src in self.clones.items()}
        return copy_optimizer(optimizer, model, result, copies, clones)


def _restack(container: nn.Module, sources: list[int], clones: dict[int, torch.Tensor]) -> None:
    """Rebuild ``container``'s children from ``sources`` (old index per new child): the first
    use of a child is the child itself, every later one a deep copy. Numbered children are
    renumbered; named ones keep their names and copies get ``<name>_stack<k>``."""
    items = list(container._modules.items())
    numbered = [k for k, _ in items] == [str(i) for i in range(len(items))]
    used: dict[int, int] = {}
    taken = {k for k, _ in items}
    new_items = []
    for i in sources:
        key, child = items[i]
        k = used.get(i, 0)
        used[i] = k + 1
        if k:
            original = child
            child = copy.deepcopy(original)
            for p, q in zip(original.parameters(), child.parameters()):
                clones[id(q)] = p
            if not numbered:
                j = k
                while f"{key}_stack{j}" in taken:
                    j += 1
                key = f"{key}_stack{j}"
                taken.add(key)
        new_items.append((str(len(new_items)) if numbered else key, child))
    container._modules.clear()
    container._modules.update(new_items)


def stack_with_plan(
    model: nn.Module,
    factor: int = 2,
    *,
    order: str = "repeat",
    stacks: Sequence[str] | str | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    registry: RuleRegistry | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Grown[StackPlan]:
    """:func:`stack`, returning a :class:`~autogrow.transforms.skeleton.Grown`: the deeper
    model, the :class:`StackPlan` (stacks, depths, order, the measured output change) and,
    when ``optimizer`` is given, the new optimizer (else None). Arguments as for :func:`stack`.

    >>> import torch
    >>> blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.layers = blocks
    ...     def forward(self, x):
    ...         for layer in self.layers:
    ...             x = torch.tanh(layer(x))
    ...         return x
    >>> grown = stack_with_plan(Net(), 2, order="interleave", example_inputs=(torch.randn(2, 4),))
    >>> len(grown.model.layers), grown.plan.sources["layers"], grown.plan.output_change > 0
    (6, (0, 0, 1, 1, 2, 2), True)
    """
    del registry  # stacking copies modules; it traces no graph, so it uses no rules
    transform = StackTransform(factor, order=order, stacks=stacks)
    grown = grow(
        model,
        transform,
        example_inputs=example_inputs,
        inplace=inplace,
        verify=verify,
        tolerance=tolerance,
        optimizer=optimizer,
    )
    plan = dataclasses.replace(grown.plan, output_change=transform.change)
    return Grown(grown.model, plan, grown.optimizer)


@overload
def stack(
    model: nn.Module,
    factor: int = ...,
    *,
    order: str = ...,
    stacks: Sequence[str] | str | None = ...,
    example_inputs: tuple[Any, ...] | None = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    registry: RuleRegistry | None = ...,
    optimizer: None = ...,
) -> nn.Module: ...


@overload
def stack(
    model: nn.Module,
    factor: int = ...,
    *,
    order: str = ...,
    stacks: Sequence[str] | str | None = ...,
    example_inputs: tuple[Any, ...] | None = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    registry: RuleRegistry | None = ...,
    optimizer: torch.optim.Optimizer,
) -> tuple[nn.Module, torch.optim.Optimizer]: ...


def stack(
    model: nn.Module,
    factor: int = 2,
    *,
    order: str = "repeat",
    stacks: Sequence[str] | str | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    registry: RuleRegistry | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module | tuple[nn.Module, torch.optim.Optimizer]:
    """Return a deeper model whose layer stacks are copies of its trained layers (G_stack).

    **Not function-preserving**: the copies change what the model computes; the change is
    measured and reported (:attr:`StackPlan.output_change` of :func:`stack_with_plan`), not
    refused. G_stack (Du et al., NeurIPS 2024) found that a model grown this way from a
    trained shallow one reaches the loss of a deep one trained from scratch with fewer tokens.

    Args:
        model: any ``nn.Module``; it is never modified unless ``inplace=True``.
        factor: each layer stack becomes ``factor`` times as deep (an int >= 2).
        order: ``"repeat"`` (default): the whole trained stack ``factor`` times in a row,
            ``L1..Ln, L1..Ln`` (G_stack's best); ``"interleave"``: each layer ``factor``
            times in place, ``L1, L1, L2, L2, ...``.
        stacks: the containers to stack (names of ``nn.Sequential``/``nn.ModuleList``
            modules). None: a model library's layer stacks (a transformers model's
            ``model.layers``, whose length the config records; the config's layer count,
            per-layer lists such as ``layer_types`` and each layer's ``layer_idx`` are kept in
            step), else every outermost container's longest run of identically structured
            blocks that keep their input's shape (a block run alone on a residual stage
            counts; in a stage whose first block downsamples, the blocks after it).
        example_inputs: positional inputs for the recording forward and the check; inferred
            from the first Conv/Linear/Embedding when omitted.
        inplace: modify and return ``model`` itself (restored if the check fails).
        verify: run the stacked model in eval mode: raise VerificationError if it fails to
            run or its outputs' shapes differ, and measure the output change.
        tolerance: None (default): accept any output change; a number: raise
            VerificationError when the max relative change exceeds it.
        registry: accepted for the same signature as :func:`autogrow.widen`; stacking traces
            no graph, so it uses no rules.
        optimizer: a ``torch.optim`` optimizer over ``model``'s parameters (the classes
            :func:`autogrow.widen` supports); stack then returns ``(model, new_optimizer)``:
            every layer keeps its state (cloned), and every copied layer joins its source's
            param group with a copy of its source's state. The given optimizer is untouched.

    Returns:
        The stacked model (a deep copy, or ``model`` itself with ``inplace=True``); with
        ``optimizer``, the pair ``(model, optimizer)``. Copies in a numbered container are
        renumbered (``layers.0`` ... ``layers.2n-1``); in a named one they are called
        ``<name>_stack1``, ... The step is recorded, so :func:`autogrow.save` and
        :func:`autogrow.load` rebuild the architecture.

    Raises:
        InvalidArgumentError: ``factor`` not an int >= 2, an unknown ``order``, a
            ``stacks`` name that is not a submodule.
        UnsupportedOpError: no layer stack found (or a named container holds no run of
            identical blocks); the message says why.
        ConstraintError: the model's library could not describe the deeper model.
        VerificationError: the stacked model fails to run, its outputs' shapes differ, or
            the change exceeds ``tolerance``; the message names the module.

    >>> import torch, autogrow
    >>> block = lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sequential(block(), block()),
    ...                           torch.nn.Linear(8, 2))
    >>> deep = autogrow.stack(net, 2)
    >>> len(deep[1]), torch.equal(deep[1][2][0].weight, net[1][0][0].weight)
    (4, True)
    """
    return stack_with_plan(
        model,
        factor,
        order=order,
        stacks=stacks,
        example_inputs=example_inputs,
        inplace=inplace,
        verify=verify,
        tolerance=tolerance,
        registry=registry,
        optimizer=optimizer,
    ).returned()
