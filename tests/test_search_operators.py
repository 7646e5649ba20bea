"""The growth search's newer choices: paired widening, stacking and the LR recipe after growth.

Plans sample them under parameter names that depend only on the seed, apply them with
``autogrow.widen(symmetry="paired")`` / ``autogrow.stack``, the report names them, and a child
trains under the sampled LR recipe.
"""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

import autogrow
from autogrow.search import Growth, SearchSpace, Training
from autogrow.search.data import digits
from autogrow.search.growth import apply_plan, sample_plan, seed_sites, site_map, tag
from autogrow.search.models import mlp, small_resnet
from autogrow.search.objective import _apply_recipe
from autogrow.search.report import format_plan, plan_legend
from autogrow.search.runner import run
from autogrow.verify import compare
from autogrow.verify import run as run_model

INPUTS = (torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _resnet():
    torch.manual_seed(0)
    return small_resnet(1, [4, 8], [1, 1], 10).eval()


def _tagged(model, sites):
    return tag(model, {s: s for s in {*sites.widen, *sites.deepen}})


def test_kinds_and_validation():
    growth = Growth(paired=True, stack=(2, 3), lr_recipes=("keep", "tenth"))
    assert growth.kinds == ("widen", "widen-paired", "deepen", "stack")
    assert Growth(widen=[], paired=True).kinds == ("deepen",)
    with pytest.raises(autogrow.InvalidArgumentError, match="Growth.stack"):
        Growth(stack=(1,))
    with pytest.raises(autogrow.InvalidArgumentError, match="Growth.lr_recipes"):
        Growth(lr_recipes=("half",))
    with pytest.raises(autogrow.InvalidArgumentError, match="Growth.lr_recipes"):
        Growth(lr_recipes="keep")


def test_paired_widening_plan_is_exact_and_named():
    growth = Growth(paired=True, deepen=[])
    model = _resnet()
    sites = seed_sites(model, growth, INPUTS)
    site = sites.widen[0]
    params = {"n_ops": 1, "op0": "widen-paired", "op0_widen": site, "op0_factor": 2.0}
    plan = sample_plan(optuna.trial.FixedTrial(params), growth, sites)
    assert plan[0]["symmetry"] == "paired" and plan[0]["op"] == "widen"
    assert format_plan(plan).startswith(f"widen paired {site} ")
    assert "+N/-N" in plan_legend([plan])
    grown = apply_plan(_tagged(model, sites), plan, INPUTS, seed=0)
    assert grown.autogrow_recipe.steps[-1].args["symmetry"] == "paired"
    assert compare(run_model(grown, INPUTS), run_model(model, INPUTS)).max_error < 1e-4


def test_stack_plan_deepens_every_stage_and_keeps_the_sites():
    growth = Growth(stack=(2,))
    model = _resnet()
    sites = seed_sites(model, growth, INPUTS)
    assert sites.stack and sites.offers("stack")
    trial = optuna.trial.FixedTrial({"n_ops": 1, "op0": "stack", "op0_stack": 2})
    plan = sample_plan(trial, growth, sites)
    assert plan == [{"op": "stack", "site": None, "factor": 2, "kind": "stack"}]
    assert format_plan(plan) == "stack ×2" and "changes the function" in plan_legend([plan])
    tagged = _tagged(model, sites)
    before = site_map(tagged)
    grown = apply_plan(tagged, plan, INPUTS, seed=0)
    assert [len(s) for s in grown.stages] == [2, 5]  # stage 1: down conv, BN, ReLU, 2 blocks
    assert site_map(grown) == before  # the originals keep their site marks (copies come later)
    assert grown.autogrow_recipe.steps[-1].op == "stack"


def test_a_seed_without_layer_stacks_refuses_stacking():
    with pytest.raises(autogrow.UnsupportedOpError, match="no layer stack"):
        seed_sites(mlp(64, [8, 8], 10), Growth(stack=(2,)), INPUTS)


@pytest.mark.parametrize(
    ("name", "done", "expected"),
    [("decay", 0, [1.0, 0.5, 0.0, 0.0]), ("decay", 1, [0.5, 0.0, 0.0, 0.0]),
     ("tenth", 0, [0.1] * 4), ("keep", 0, [1.0] * 4)],
)  # fmt: skip
def test_a_childs_recipe_spans_its_steps_and_resumes_where_it_was(name, done, expected):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0)
    _apply_recipe(opt, name, 2, done=done)  # a child of 2 steps; decay spans them
    rates = []
    for _ in range(4):
        before = p.item()
        p.grad = torch.ones_like(p)
        opt.step()
        rates.append(before - p.item())
    assert rates == pytest.approx(expected, abs=1e-12)


def test_search_samples_operators_and_lr_recipes(tmp_path):
    space = SearchSpace(
        name="ops",
        seed="autogrow.search.models:small_resnet",
        seed_kwargs={"in_channels": 1, "widths": [4], "blocks": [1], "num_classes": 10},
        input_shape=(2, 1, 8, 8),
        data=lambda: digits(batch_size=100, subset=200),
        training=Training(epochs=1, lr=0.05),
        growth=Growth(
            deepen=[],
            factors=(2.0,),
            paired=True,
            stack=(2,),
            lr_recipes=("keep", "tenth", "decay"),
            max_ops=1,
        ),
        pruner="none",
    )
    study = run(space, 4, run_dir=tmp_path / "run", progress=False, summary=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert "lr_recipe" not in trials[0].user_attrs  # the root trains the seed
    for t in trials[1:]:
        assert t.params["op0"] in ("widen", "widen-paired", "stack")
        assert t.user_attrs["lr_recipe"] == t.params["lr_recipe"] in ("keep", "tenth", "decay")
        assert t.user_attrs["params"] >= trials[0].user_attrs["params"]
