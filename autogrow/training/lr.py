"""The learning-rate schedule across growth: carry the scheduler, optionally re-warm.

* :func:`carry_scheduler` makes a copy of a scheduler on the grown optimizer, with its state
  (``last_epoch``, ``base_lrs``, ``_last_lr``, the state of chained schedulers ...), so the
  schedule continues from its step count. The copy is a ``copy.deepcopy`` in which the old
  optimizer stands for the new one, so any scheduler class that holds its optimizer as an
  attribute (all of ``torch.optim.lr_scheduler``, the Hugging Face ``LambdaLR`` ones) works.
* :class:`Rewarm` scales the learning rate of the ``k`` optimizer steps after growth by
  ``j / k`` (``j = 1 ... k``), around ``optimizer.step()`` only (a pre/post step hook), so the
  scheduler never sees the scaled values and recursive schedulers (``ExponentialLR`` ...) do
  not compound them.
"""

from __future__ import annotations

import copy
import functools
import weakref
from typing import Any

import torch

__all__ = ["LR_POLICIES", "Rewarm", "carry_scheduler"]

LR_POLICIES = ("keep", "rewarm")


def carry_scheduler(scheduler: Any, old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> Any:
    """A copy of ``scheduler`` that drives ``new`` instead of ``old``, at the same step.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2)); opt = torch.optim.SGD([p], lr=1.0)
    >>> s = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    >>> for _ in range(3):
    ...     opt.step(); s.step()
    >>> opt2 = torch.optim.SGD([p], lr=opt.param_groups[0]["lr"])
    >>> opt2.param_groups[0]["initial_lr"] = 1.0
    >>> s2 = carry_scheduler(s, opt, opt2)
    >>> s2.last_epoch, s2.optimizer is opt2, s2.get_last_lr()
    (3, True, [0.5])
    """
    if scheduler is None:
        return None
    memo: dict[int, Any] = {id(old): new}
    carried = copy.deepcopy(scheduler, memo)
    _mark_stepped(new, old)
    return carried


def _mark_stepped(new: torch.optim.Optimizer, old: torch.optim.Optimizer) -> None:
    """Do what ``LRScheduler.__init__`` does to its optimizer: count ``optimizer.step()`` calls
    (the scheduler warns when it is stepped before the optimizer)."""
    if not hasattr(new.step, "_wrapped_by_lr_sched"):
        ref = weakref.ref(new)
        func = type(new).step

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            opt = ref()
            opt._opt_called = True  # type: ignore[union-attr]
            return func(opt, *args, **kwargs)

        wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        new.step = wrapper  # type: ignore[method-assign]
    new._opt_called = getattr(old, "_opt_called", True)  # type: ignore[attr-defined]


class Rewarm:
    """Linear learning-rate warm-up over the first ``steps`` optimizer steps of ``optimizer``.

    Step ``j`` (1-based) runs at ``j / steps`` times the learning rate the param group holds;
    the group's value is restored after the step. Removes itself after ``steps`` steps.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(1)); opt = torch.optim.SGD([p], lr=1.0)
    >>> warm = Rewarm(opt, steps=4)
    >>> for _ in range(5):
    ...     p.grad = torch.ones(1); opt.step()
    >>> round(1 - p.item(), 4), opt.param_groups[0]["lr"], warm.done  # 0.25+0.5+0.75+1+1
    (3.5, 1.0, True)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int) -> None:
        self.steps = steps
        self.taken = 0
        self._saved: list[Any] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    @property
    def done(self) -> bool:
        """Whether the warm-up is over (the hooks are removed)."""
        return self.taken >= self.steps

    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        factor = min(1.0, (self.taken + 1) / self.steps)
        self._saved = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = g["lr"] * factor

    def _post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for g, lr in zip(opt.param_groups, self._saved):
            g["lr"] = lr
        self.taken += 1
        if self.done:
            self.remove()

    def remove(self) -> None:
        """Stop scaling (the learning rates are the scheduler's again)."""
        for h in self._handles:
            h.remove()
        self._handles = []
