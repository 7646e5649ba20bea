"""The growth-vs-scratch benchmarks (benchmarks/lm_growth.py, benchmarks/vision_growth.py) run
in their ``--quick`` mode, grow exactly where the operator is exact, and report every arm."""

from __future__ import annotations

import doctest

import pytest
import torch

from benchmarks import accounting, lm_growth, vision_growth


def test_accounting_doctests_pass():
    assert doctest.testmod(accounting).failed == 0


def test_benchmark_recipes_are_the_librarys_with_the_budgets_lengths():
    budget = lm_growth.FULL
    p = torch.nn.Parameter(torch.zeros(1))

    def recipe(name):
        return accounting.apply_recipe(torch.optim.SGD([p], lr=1.0), name, budget)

    assert recipe("keep").multiplier == 1.0
    assert recipe("tenth").multiplier == pytest.approx(0.1)
    assert recipe("rewarm").factor(0) == pytest.approx(1 / budget.warmup)
    assert recipe("rewarm").factor(budget.warmup) == 1.0
    left = budget.steps - budget.grow_at
    assert recipe("decay").factor(0) == 1.0 and recipe("decay").factor(left) == 0.0


@pytest.mark.slow
def test_lm_growth_quick_runs_every_arm_and_exact_arms_start_at_the_small_models_loss(tmp_path):
    out = lm_growth.main(
        [
            "--quick",
            "--jobs",
            "1",
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "lm.json"),
            "--figure",
            str(tmp_path / "lm.png"),
        ]  # fmt: skip
    )
    runs = out["runs"]
    expected = {(a, r) for a, r, _, _ in lm_growth.tasks([0], lm_growth.QUICK)}
    assert {(r["arm"], r["recipe"]) for r in runs} == expected
    grown = [r for r in runs if "growth" in r]
    assert grown, [r.get("error") for r in runs]
    for r in grown:
        before, after = r["growth"]["before"], r["growth"]["after"]
        if r["growth"]["exact"]:  # function preserved: the same validation loss
            assert after == pytest.approx(before, rel=1e-5, abs=1e-5), r["arm"]
        # the grown model costs more per step than the small one it came from
        assert r["flops_per_step"]["model"] > r["flops_per_step"]["small"]
        steps = [p[0] for p in r["curve"]]
        assert steps[-1] == lm_growth.QUICK.steps and lm_growth.QUICK.grow_at in steps
    assert (tmp_path / "lm.png").exists()
    assert "widen-split" in out["tables"]["operators"]
    # the saved JSON redraws the same tables
    again = lm_growth.main(["--report", str(tmp_path / "lm.json"), "--figure",
                            str(tmp_path / "lm2.png")])  # fmt: skip
    assert again["tables"] == out["tables"]


def test_vision_growth_quick_digits_widens_exactly_and_reports_every_recipe(tmp_path):
    out = vision_growth.main(
        [
            "--quick",
            "--jobs",
            "1",
            "--seeds",
            "0",
            "--cases",
            "digits-mlp",
            "--out",
            str(tmp_path / "v.json"),
        ]  # fmt: skip
    )
    runs = out["digits-mlp"]["runs"]
    for r in runs:
        if r["arm"] != "scratch":
            before, after = r["growth"]["before"], r["growth"]["after"]
            assert after[0] == before[0]  # the same accuracy
            assert after[1] == pytest.approx(before[1], rel=1e-5)  # and loss
    table = out["digits-mlp"]["table"]
    assert all(f"| widen-split | {recipe} |" in table for recipe in vision_growth.RECIPES)
