"""The learning-rate schedule across growth: carry the scheduler, then apply an LR recipe.

* :func:`carry_scheduler` makes a copy of a scheduler on the grown optimizer, with its state
  (``last_epoch``, ``base_lrs``, ``_last_lr``, the state of chained schedulers ...), so the
  schedule continues from its step count. The copy is a ``copy.deepcopy`` in which the old
  optimizer stands for the new one, so any scheduler class that holds its optimizer as an
  attribute (all of ``torch.optim.lr_scheduler``, the Hugging Face ``LambdaLR`` ones) works.
* An LR recipe (:func:`recipe`, :data:`LR_RECIPES`) scales the rate of the optimizer steps
  after growth by a factor of the step count ``j`` since growth, around ``optimizer.step()``
  only (a pre/post step hook, :class:`LRScale`), so the scheduler never sees the scaled values
  and recursive schedulers (``ExponentialLR`` ...) do not compound them:

  - ``"keep"``: factor 1, the carried schedule as it is;
  - ``"rewarm"``: ``j / steps`` for ``j = 1 ... steps``, then 1 (:class:`Rewarm`);
  - ``"tenth"``: ``scale`` (0.1) for every step after growth: Net2Net's student trained at a
    tenth of the teacher's rate;
  - ``"decay"``: cosine from 1 down to ``floor`` (0) over ``steps`` steps, then ``floor``
    (LEMON's "keep the maximum rate, decay faster": the grown model starts at the rate the
    schedule has and ends its decay within ``steps``; set ``steps`` to the training steps left
    after growth).

The recipe a :class:`~autogrow.training.Grower` applies by default is :data:`DEFAULT_LR_RECIPE`.
"""

from __future__ import annotations

import copy
import functools
import math
import weakref
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = [
    "DEFAULT_LR_RECIPE",
    "LR_POLICIES",
    "LR_RECIPES",
    "LRScale",
    "Rewarm",
    "carry_scheduler",
    "recipe",
]

LR_RECIPES = ("keep", "rewarm", "tenth", "decay")
"""The learning-rate recipes after growth (:func:`recipe`, ``Grower(lr=...)``)."""

LR_POLICIES = LR_RECIPES  # the earlier name

DEFAULT_LR_RECIPE = "keep"
"""The recipe ``Grower`` applies unless told otherwise; chosen by measurement (docs/evidence.md,
``benchmarks.lm_growth`` and ``benchmarks.vision_growth``: with every recipe LR-tuned, ``keep``
gave the lowest final loss on a byte-level Llama and was best or tied on a digits MLP and a
tiny ResNet; ``tenth`` was the worst in all three)."""

TENTH = 0.1  # Net2Net: the student trains at a tenth of the teacher's learning rate


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


class LRScale:
    """Scale the learning rate of ``optimizer``'s steps by ``factor(j)``, ``j`` the number of
    steps taken since this object was made (0 for the first), around ``optimizer.step()``
    only: a pre-step hook multiplies each param group's rate, a post-step hook restores it,
    so a scheduler never sees the scaled values. With ``steps``, the scaling stops (the hooks
    are removed) after that many steps.

    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(1)); opt = torch.optim.SGD([p], lr=1.0)
    >>> half = LRScale(opt, lambda j: 0.5, steps=2)
    >>> for _ in range(3):
    ...     p.grad = torch.ones(1); opt.step()
    >>> round(1 - p.item(), 4), half.done  # 0.5 + 0.5 + 1
    (2.0, True)
    """

    name = "scale"

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: Callable[[int], float],
        steps: int | None = None,
    ) -> None:
        self.factor = factor
        self.steps = steps
        self.taken = 0
        self._saved: list[Any] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        if steps == 0:
            self.remove()

    @property
    def done(self) -> bool:
        """Whether the scaling is over (the hooks are removed)."""
        return self.steps is not None and self.taken >= self.steps

    @property
    def multiplier(self) -> float:
        """The factor the next optimizer step runs at (1 once done)."""
        return 1.0 if self.done else float(self.factor(self.taken))

    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        factor = self.multiplier
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


class Rewarm(LRScale):
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

    name = "rewarm"

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int) -> None:
        super().__init__(optimizer, lambda j: min(1.0, (j + 1) / steps), steps)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _fraction(name: str, value: Any, *, positive: bool) -> float:
    low_ok = value > 0 if positive else value >= 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low_ok and value <= 1):
        bound = "0 < x <= 1" if positive else "0 <= x <= 1"
        raise InvalidArgumentError(f"{name} must be a number with {bound}, got {value!r}")
    return float(value)


def recipe(
    optimizer: torch.optim.Optimizer,
    name: str = DEFAULT_LR_RECIPE,
    *,
    steps: int | None = None,
    scale: float = TENTH,
    floor: float = 0.0,
) -> LRScale:
    """Apply the learning-rate recipe ``name`` to the steps of ``optimizer`` from now on (call
    it right after growth, on the grown optimizer); returns the :class:`LRScale` doing it.

    Works in any loop: nothing to call per step (the optimizer's step hooks apply it), and the
    scheduler, if any, keeps driving the param groups' rates, which the recipe multiplies:

    - ``"keep"``: factor 1 (nothing changes).
    - ``"rewarm"``: ``(j + 1) / steps`` for the first ``steps`` steps (``j`` = 0, 1, ...),
      then 1; ``steps`` defaults to 100.
    - ``"tenth"``: ``scale`` (default 0.1, Net2Net) for every later step.
    - ``"decay"``: ``floor + (1 - floor) · (1 + cos(π · j / steps)) / 2`` for
      ``j < steps``, then ``floor``: starts at the full (maximum) rate and ends a cosine decay
      within ``steps`` steps (LEMON's "keep the maximum rate, decay faster"); ``steps`` is
      required (e.g. the steps left in training).

    Use ``.remove()`` to stop it early (another growth: a new recipe on the new optimizer).

    Raises:
        InvalidArgumentError: an unknown ``name``; ``steps`` not an int >= 1 (or missing for
            ``"decay"``); ``scale`` not in (0, 1]; ``floor`` not in [0, 1].

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(1)); opt = torch.optim.SGD([p], lr=1.0)
    >>> r = recipe(opt, "decay", steps=4)
    >>> [round(r.factor(j), 3) for j in range(5)], r.multiplier
    ([1.0, 0.854, 0.5, 0.146, 0.0], 1.0)
    >>> recipe(opt, "tenth").multiplier * recipe(opt, "keep").multiplier
    0.1
    """
    if name not in LR_RECIPES:
        raise InvalidArgumentError(f"lr recipe must be one of {LR_RECIPES}, got {name!r}")
    if steps is not None:
        steps = _positive_int("steps", steps)
    result: LRScale
    if name == "keep":
        result = LRScale(optimizer, lambda j: 1.0, 0)
    elif name == "rewarm":
        result = Rewarm(optimizer, 100 if steps is None else steps)
    elif name == "tenth":
        factor = _fraction("scale", scale, positive=True)
        result = LRScale(optimizer, lambda j: factor, steps)
    else:
        if steps is None:
            raise InvalidArgumentError(
                'the "decay" recipe needs steps= (the steps over which the rate decays, e.g. '
                "the training steps left after growth)"
            )
        low = _fraction("floor", floor, positive=False)
        n = steps

        def cosine(j: int) -> float:
            return low + (1 - low) * (1 + math.cos(math.pi * min(j, n) / n)) / 2

        result = LRScale(optimizer, cosine, None)
    result.name = name
    return result
