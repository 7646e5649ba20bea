"""The learning-rate recipes after growth: the rate each optimizer step runs at.

Every recipe is a scale on the carried schedule around ``optimizer.step()``: the rate a step
uses is the schedule's times the recipe's factor, and the schedule itself is never changed
(a recursive scheduler does not compound the factor).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import autogrow
from autogrow.training import lr as lr_mod


def _opt(lr: float = 1.0) -> tuple[nn.Parameter, torch.optim.SGD]:
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # exact enough to read rates back
    return p, torch.optim.SGD([p], lr=lr)


def _rates(opt: torch.optim.Optimizer, p: nn.Parameter, n: int, sched=None) -> list[float]:
    """The rate of each of ``n`` SGD steps on a unit gradient: the parameter's change."""
    rates = []
    for _ in range(n):
        before = p.item()
        p.grad = torch.ones_like(p)
        opt.step()
        if sched is not None:
            sched.step()
        rates.append(before - p.item())
    return rates


def _factors(name: str, n: int, **kw) -> list[float]:
    p, opt = _opt()
    lr_mod.recipe(opt, name, **kw)
    return _rates(opt, p, n)


def test_keep_leaves_the_rate():
    assert _factors("keep", 3) == pytest.approx([1.0, 1.0, 1.0])


def test_rewarm_ramps_up_then_stops():
    assert _factors("rewarm", 5, steps=4) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_tenth_scales_every_later_step():
    assert _factors("tenth", 4) == pytest.approx([0.1] * 4)
    assert _factors("tenth", 3, scale=0.5) == pytest.approx([0.5] * 3)


def test_decay_is_a_cosine_to_the_floor():
    n = 4
    expected = [(1 + math.cos(math.pi * j / n)) / 2 for j in range(n)] + [0.0, 0.0]
    assert _factors("decay", 6, steps=n) == pytest.approx(expected, abs=1e-7)
    floor = 0.2
    with_floor = [floor + (1 - floor) * e for e in expected]
    assert _factors("decay", 6, steps=n, floor=floor) == pytest.approx(with_floor, abs=1e-7)


def test_a_recursive_schedule_is_scaled_not_compounded():
    p, opt = _opt()
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    lr_mod.recipe(opt, "tenth")
    rates = _rates(opt, p, 4, sched)
    assert rates == pytest.approx([0.1 * 0.5**k for k in range(4)])
    assert sched.get_last_lr() == pytest.approx([0.5**4])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5**4)  # restored after each step


def test_remove_stops_the_recipe():
    p, opt = _opt()
    r = lr_mod.recipe(opt, "tenth")
    assert _rates(opt, p, 1) == pytest.approx([0.1])
    r.remove()
    assert _rates(opt, p, 1) == pytest.approx([1.0])


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("half", {}, "must be one of"),
        ("decay", {}, "needs steps"),
        ("rewarm", {"steps": 0}, "steps must be an int"),
        ("tenth", {"scale": 0.0}, "scale must be"),
        ("tenth", {"scale": 2.0}, "scale must be"),
        ("decay", {"steps": 3, "floor": -0.1}, "floor must be"),
    ],
)
def test_bad_arguments(name, kw, match):
    _, opt = _opt()
    with pytest.raises(autogrow.InvalidArgumentError, match=match):
        lr_mod.recipe(opt, name, **kw)


def test_the_default_recipe_is_a_known_one():
    assert lr_mod.DEFAULT_LR_RECIPE in lr_mod.LR_RECIPES


def _grow_and_train(lr: str, n: int, **kw) -> tuple[list[float], list[float]]:
    """Rates the first ``n`` steps after a widening at step 0 run at, and the schedule's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    grower = autogrow.Grower({0: autogrow.op.widen(2.0)}, seed=0, lr=lr, **kw)
    x = torch.randn(8, 4)
    seen, scheduled = [], []
    for step in range(n + 1):
        model(x).pow(2).mean().backward()
        if step:
            scheduled.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        model, opt, sched = grower.step(step, model, opt, sched)
        if step == 0:  # registered after the grower's recipe: sees the scaled rate
            opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    return seen, scheduled


@pytest.mark.parametrize(
    ("lr", "kw", "factors"),
    [
        ("keep", {}, [1.0, 1.0, 1.0, 1.0]),
        ("rewarm", {"warmup": 2}, [0.5, 1.0, 1.0, 1.0]),
        ("tenth", {}, [0.1, 0.1, 0.1, 0.1]),
        ("decay", {"decay_steps": 2}, [1.0, 0.5, 0.0, 0.0]),
    ],
)
def test_grower_applies_the_recipe_after_growth(lr, kw, factors):
    seen, scheduled = _grow_and_train(lr, 4, **kw)
    assert scheduled == pytest.approx([0.1 / (1 + s) for s in range(1, 5)])
    assert seen == pytest.approx([s * f for s, f in zip(scheduled, factors)], abs=1e-9)


def test_grower_decay_needs_its_steps():
    with pytest.raises(autogrow.InvalidArgumentError, match="decay_steps"):
        autogrow.Grower({0: autogrow.op.widen(2.0)}, lr="decay")
    with pytest.raises(autogrow.InvalidArgumentError, match="lr must be one of"):
        autogrow.Grower({0: autogrow.op.widen(2.0)}, lr="half")
