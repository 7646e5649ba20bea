"""The one sequence every growth transform runs; ``widen``, ``deepen`` and ``stack`` supply
its parts.

:func:`grow` checks the optimizer before anything changes, prepares the example inputs, has
the transform compute its plan, prepares the model's adapter (which may refuse, still before
any change), applies the plan (to a deep copy, or in place with an undo), chains the adapter's
undo onto the transform's, has the adapter check that its library can rebuild the result,
checks the outputs (the transform's :meth:`Transform.check`: equal within the tolerance, or
for ``stack`` measured), or without verification traces the result again to check that its
forward takes the original's path (undoing and re-raising on any failure), lets the
transform finish (widen's noise), records the step in the model's lineage and grows the
optimizer. It returns a :class:`Grown`: the model, the transform's frozen plan and the new
optimizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from ..adapters import adapter_for
from ..errors import StructureError, VerificationError
from ..tracing import prepare_inputs
from ..verify import check_tolerance, run
from ..verify import verify as verify_outputs
from .lineage import record_step
from .optimizer import check_optimizer

P = TypeVar("P")
Undo = Callable[[], None]


@dataclass(frozen=True)
class Grown(Generic[P]):
    """A grown model, the frozen plan that grew it, and the grown optimizer (if one was given).

    Attributes:
        model: the grown model (a deep copy, or the model itself with ``inplace=True``).
        plan: the transform's plan (:class:`~autogrow.transforms.widen.WidenPlan`,
            :class:`~autogrow.transforms.depth.DeepenPlan` or
            :class:`~autogrow.transforms.stack.StackPlan`).
        optimizer: the new optimizer over ``model``'s parameters, or None when none was given.

    >>> import torch
    >>> from autogrow.transforms.widen import widen_with_plan
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 1))
    >>> grown = widen_with_plan(net, 2.0)
    >>> grown.model[0].out_features, grown.optimizer
    (8, None)
    """

    model: nn.Module
    plan: P
    optimizer: torch.optim.Optimizer | None = None

    def returned(self) -> nn.Module | tuple[nn.Module, torch.optim.Optimizer]:
        """What ``widen``/``deepen`` return: the model, or ``(model, optimizer)``.

        >>> Grown(torch.nn.Identity(), None).returned()
        Identity()
        """
        if self.optimizer is None:
            return self.model
        return self.model, self.optimizer


class Transform(ABC, Generic[P]):
    """The parts of one growth call that :func:`grow` runs in its fixed order.

    An instance serves one call: :meth:`plan` may keep working state (an analysis, the
    recording of a forward) on ``self`` for the later steps.
    """

    op: str  # the recipe's op name
    what: str  # for verification messages: "widened", "deepened"

    @abstractmethod
    def plan(self, model: nn.Module, inputs: tuple, *, verify: bool) -> tuple[P, Any]:
        """(the frozen plan, the reference outputs or None to run the model for them)."""

    def prepare_adapter(self, model: nn.Module) -> Callable[[nn.Module], Undo] | None:
        """Before any change: what to apply to the grown model for the model's library (its
        return value undoes it), or None. May raise to refuse the growth."""
        return None

    @abstractmethod
    def apply(self, model: nn.Module, *, inplace: bool) -> tuple[nn.Module, Undo]:
        """Grow ``model`` (itself with ``inplace``, else a copy): (result, undo)."""

    def describe_module(self, name: str) -> str | None:
        """For a verification error in module ``name`` of the grown model: what this growth
        changed there (e.g. its width groups), or None."""
        return None

    def check(
        self, result: nn.Module, inputs: tuple, reference: Any, *, tolerance: float | None
    ) -> None:
        """Compare the grown model's outputs with ``reference`` (run by :func:`grow` when
        ``verify``); raise to refuse. By default: equal within the tolerance
        (:func:`autogrow.verify.verify`); a transform that changes the function on purpose
        (``stack``) measures instead."""
        verify_outputs(
            result,
            inputs,
            reference,
            what=self.what,
            tolerance=tolerance,
            describe_module=self.describe_module,
        )

    def check_structure(self, model: nn.Module, result: nn.Module, inputs: tuple) -> None:
        """Without verification (and to explain a failed one): trace ``result`` again and
        raise StructureError where its forward takes another path than ``model``'s
        (:mod:`autogrow.transforms.structure`). By default nothing."""

    def finish(self, result: nn.Module) -> None:
        """After verification (widen's noise): by default nothing."""

    @abstractmethod
    def recipe_args(self) -> dict[str, Any]:
        """The JSON arguments the lineage step records."""

    @abstractmethod
    def grow_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, result: nn.Module
    ) -> torch.optim.Optimizer:
        """A new optimizer over ``result``'s parameters, grown from ``optimizer``."""


def chain_undo(first: Undo, second: Undo) -> Undo:
    """One undo function that runs ``first`` then ``second``.

    >>> calls = []
    >>> chain_undo(lambda: calls.append(1), lambda: calls.append(2))(); calls
    [1, 2]
    """

    def undo() -> None:
        first()
        second()

    return undo


def grow(
    model: nn.Module,
    transform: Transform[P],
    *,
    example_inputs: tuple[Any, ...] | None,
    inplace: bool,
    verify: bool,
    optimizer: torch.optim.Optimizer | None,
    tolerance: float | None = None,
) -> Grown[P]:
    """Run ``transform`` on ``model``: plan, apply, verify, record, grow the optimizer.

    >>> import torch
    >>> from autogrow.transforms.depth import DeepenTransform
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> grown = grow(net, DeepenTransform(None, 1), example_inputs=None, inplace=False,
    ...              verify=True, optimizer=None)
    >>> len(grown.model), grown.plan.n
    (5, 1)
    """
    check_tolerance(tolerance)
    if optimizer is not None:
        check_optimizer(optimizer, model)  # before anything is changed
    inputs = prepare_inputs(model, example_inputs)
    plan, reference = transform.plan(model, inputs, verify=verify)
    if verify and reference is None:
        reference = run(model, inputs)
    adapt = transform.prepare_adapter(model)
    result, undo = transform.apply(model, inplace=inplace)
    try:
        if adapt is not None:  # may refuse what only the grown model shows (a norm's eps)
            undo = chain_undo(adapt(result), undo)
        # The model's library must be able to rebuild what grew (a config that reloads it);
        # checked with or without verification, and undone like a failed verification.
        adapter_for(model).check_grown(result, transform.what)
        if not verify:
            # the fast path still never returns a model whose forward takes another path
            transform.check_structure(model, result, inputs)
        else:
            try:
                transform.check(result, inputs, reference, tolerance=tolerance)
            except VerificationError as error:
                if error.__cause__ is not None:
                    raise  # the grown model failed to run: the message names the line
                # outputs that differ: a forward that takes another path explains them better
                try:
                    transform.check_structure(model, result, inputs)
                except StructureError as structure:
                    raise structure from error
                raise
    except Exception:
        undo()
        raise
    transform.finish(result)
    record_step(model, result, transform.op, transform.recipe_args(), inputs)
    if optimizer is None:
        return Grown(result, plan)
    return Grown(result, plan, transform.grow_optimizer(optimizer, model, result))
