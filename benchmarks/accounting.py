"""Compute accounting shared by the growth-vs-scratch benchmarks (lm_growth, vision_growth).

A *curve* is a list of ``(step, cost, metric)`` points (cost: FLOPs or steps; metric: a
validation loss, lower is better, or an accuracy, higher is better). A *run* is a dict with at
least ``arm``, ``recipe``, ``seed``, ``peak`` (the learning rate) and ``curve``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable


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
    for step, cost, value in curve:
        if reached(value, target, higher):
            return step, cost
    return None


def final(run: dict) -> float:
    """The metric at the end of a run's curve."""
    return run["curve"][-1][2]


def best_peaks(runs: list[dict], higher: bool = False) -> dict[tuple[str, str], float]:
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


def cost_ratio(grown: dict, scratch: dict, higher: bool = False) -> float | None:
    """Cost for ``grown`` to first reach ``scratch``'s final metric / cost for ``scratch`` to
    first reach it (None if ``grown`` never does).

    >>> s = {"curve": [(0, 0, 3.0), (10, 10, 2.0)]}
    >>> cost_ratio({"curve": [(0, 0, 3.0), (4, 4, 2.5), (8, 6, 1.9)]}, s)
    0.6
    """
    target = final(scratch)
    mine, theirs = (
        first_reaching(grown["curve"], target, higher),
        first_reaching(scratch["curve"], target, higher),
    )
    if mine is None or theirs is None:
        return None
    return mine[1] / theirs[1]
