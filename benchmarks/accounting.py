"""The clock and the compute accounting shared by the growth-vs-scratch benchmarks
(``benchmarks.lm_growth``, ``benchmarks.vision_growth``).

The clock: every run, scratch or grown, trains ``Budget.steps`` steps at ``peak x
lr_shape(step)`` (linear warm-up, then cosine to ``min_lr`` of the peak); a grown run trains
the small model for the first ``grow_fraction`` of the steps, and after growth the library's
LR recipe (``autogrow.training.lr.recipe``, :func:`apply_recipe`) multiplies the clock's rate:
``keep`` (x1: the clock goes on), ``rewarm`` (a new linear warm-up over ``warmup`` steps),
``tenth`` (x0.1, the Net2Net paper's student rate), ``decay`` (LEMON's "keep the maximum rate,
decay faster": x a cosine from 1 to 0 over the steps left).

A *curve* is a list of ``(step, cost, metric)`` points (cost: FLOPs or steps; metric: a
validation loss, lower is better, or an accuracy, higher is better). A *run* is a dict with at
least ``arm``, ``recipe``, ``seed``, ``peak`` (the learning rate) and ``curve``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from autogrow.training import lr

RECIPES = lr.LR_RECIPES  # keep, rewarm, tenth, decay


@dataclass(frozen=True)
class Budget:
    """Steps, schedule, evaluation and the learning-rate grid of one benchmark run."""

    steps: int = 1000
    grow_fraction: float = 0.25
    warmup: int = 50
    min_lr: float = 0.1  # the cosine ends at this fraction of the peak
    eval_every: int = 50
    val_windows: int = 256
    lr_grid: tuple[float, ...] = (1e-3, 3e-3)

    @property
    def grow_at(self) -> int:
        return int(self.steps * self.grow_fraction)


def lr_shape(step: int, budget: Budget) -> float:
    """The schedule's factor at ``step``: linear warm-up, then cosine to ``budget.min_lr``.

    >>> b = Budget(steps=100, warmup=10, min_lr=0.1)
    >>> lr_shape(0, b), lr_shape(9, b), round(lr_shape(99, b), 3)
    (0.1, 1.0, 0.1)
    """
    if step < budget.warmup:
        return (step + 1) / budget.warmup
    progress = (step - budget.warmup) / max(1, budget.steps - 1 - budget.warmup)
    return budget.min_lr + (1 - budget.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def apply_recipe(optimizer: torch.optim.Optimizer, name: str, budget: Budget) -> lr.LRScale:
    """Right after growth: ``autogrow.training.lr.recipe`` on the grown optimizer, with the
    benchmark's lengths (``rewarm`` over ``budget.warmup`` steps, ``decay`` over the steps left).

    >>> p = torch.nn.Parameter(torch.zeros(1))
    >>> r = apply_recipe(torch.optim.SGD([p], lr=1.0), "decay", Budget(steps=8, grow_fraction=0.5))
    >>> [round(r.factor(j), 3) for j in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    """
    steps = {"rewarm": budget.warmup, "decay": budget.steps - budget.grow_at}.get(name)
    return lr.recipe(optimizer, name, steps=steps)


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value).

    >>> mean_sd([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: Iterable[float], digits: int = 3, sign: bool = False) -> str:
    """``"mean ± sd"`` of ``values``.

    >>> pm([0.5, 0.7], digits=2)
    '0.60 ± 0.14'
    """
    mu, sd = mean_sd(values)
    return f"{mu:{'+' if sign else ''}.{digits}f} ± {sd:.{digits}f}"


def reached(value: float, target: float, higher: bool) -> bool:
    return value >= target if higher else value <= target


def first_reaching(curve: list, target: float, higher: bool = False) -> tuple[int, float] | None:
    """``(step, cost)`` of the first point whose metric reaches ``target``, else None.

    >>> first_reaching([(0, 0, 3.0), (10, 5, 2.0), (20, 10, 1.5)], 2.0)
    (10, 5)
    >>> first_reaching([(0, 0, 0.5), (10, 5, 0.9)], 0.95, higher=True) is None
    True
    """
    for point in curve:
        if reached(point[2], target, higher):
            return point[0], point[1]
    return None


def final(run: dict, last: int = 1) -> float:
    """The metric at the end of a run's curve: the mean of its ``last`` points.

    >>> final({"curve": [(0, 0, 1.0), (1, 1, 0.5), (2, 2, 0.7)]}, last=2)
    0.6
    """
    # not rounded: a run must reach its own final value (rounding up would say it never does)
    return statistics.fmean(p[2] for p in run["curve"][-last:])


def best_peaks(
    runs: list[dict], higher: bool = False, last: int = 1
) -> dict[tuple[str, str], float]:
    """For each (arm, recipe): the learning rate whose final metric, averaged over the seeds,
    is best (every arm selected by the same rule).

    >>> runs = [{"arm": "a", "recipe": "keep", "seed": s, "peak": p, "curve": [(0, 0, p * s)]}
    ...         for s in (1, 2) for p in (0.1, 0.2)]
    >>> best_peaks(runs)
    {('a', 'keep'): 0.1}
    """
    scores: dict[tuple[str, str], dict[float, list[float]]] = {}
    for r in runs:
        if "curve" in r:
            scores.setdefault((r["arm"], r["recipe"]), {}).setdefault(r["peak"], []).append(
                final(r)
            )
    pick = max if higher else min
    return {
        key: pick(by_peak, key=lambda p: statistics.fmean(by_peak[p]))
        for key, by_peak in scores.items()
    }


def cost_ratio(grown: dict, scratch: dict, higher: bool = False, last: int = 1) -> float | None:
    """Cost for ``grown`` to first reach ``scratch``'s final metric (:func:`final` with
    ``last``) / cost for ``scratch`` to first reach it (None if ``grown`` never does).

    >>> s = {"curve": [(0, 0, 3.0), (10, 10, 2.0)]}
    >>> cost_ratio({"curve": [(0, 0, 3.0), (4, 4, 2.5), (8, 6, 1.9)]}, s)
    0.6
    """
    target = final(scratch, last)
    mine = first_reaching(grown["curve"], target, higher)
    theirs = first_reaching(scratch["curve"], target, higher)
    if mine is None or theirs is None:
        return None
    return mine[1] / theirs[1]
