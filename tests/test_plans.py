"""widen_with_plan / deepen_with_plan: the frozen plans, Grown, and InsertionKind."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import autogrow
from autogrow.transforms.depth import DeepenPlan, InsertionKind, deepen_with_plan
from autogrow.transforms.lineage import recipe_of
from autogrow.transforms.skeleton import Grown
from autogrow.transforms.widen import WidenPlan, widen_with_plan


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


def test_widen_with_plan_returns_the_plan_the_recipe_records():
    net = _mlp()
    grown = widen_with_plan(net, 1.5)
    assert isinstance(grown, Grown) and isinstance(grown.plan, WidenPlan)
    assert grown.optimizer is None
    step = recipe_of(grown.model).steps[-1]
    assert step.args["seed"] == grown.plan.seed
    assert dict(grown.plan.widths) == {"0": 12, "2": 9}
    assert {k: m.size for k, m in grown.plan.maps.items()} == {"0": 12, "2": 9}
    with pytest.raises(dataclasses.FrozenInstanceError):
        grown.plan.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        grown.plan.widths["0"] = 1  # type: ignore[index]


def test_widen_is_widen_with_plan_model():
    net = _mlp()
    a = autogrow.widen(net, {"0": 10}, seed=4)
    b = widen_with_plan(net, {"0": 10}, seed=4)
    assert isinstance(b.plan.factor, type(b.plan.widths))  # a read-only copy of the dict
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_plans_with_an_optimizer():
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    wide = widen_with_plan(net, 2.0, seed=0, optimizer=opt)
    assert wide.optimizer is not None and wide.returned() == (wide.model, wide.optimizer)
    deep = deepen_with_plan(net, optimizer=opt)
    assert deep.optimizer is not None
    params = {id(p) for g in deep.optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in deep.model.parameters()}


def test_deepen_with_plan_places_are_the_recorded_after():
    net = _mlp()
    grown = deepen_with_plan(net, after=["1", "3"], n=2)
    assert grown.plan == DeepenPlan(
        (("1", InsertionKind.IDENTITY), ("3", InsertionKind.IDENTITY)), 2
    )
    args = recipe_of(grown.model).steps[-1].args
    assert args == {"after": [["1", "identity"], ["3", "identity"]], "n": 2}
    assert all(type(kind) is str for _, kind in args["after"])  # plain JSON strings
    assert grown.returned() is grown.model


def test_insertion_kind_is_a_str_enum():
    assert InsertionKind.BLOCK == "block" and "identity" == InsertionKind.IDENTITY
    assert str(InsertionKind.BLOCK) == "block" and f"{InsertionKind.IDENTITY:>9}" == " identity"
    assert json.dumps([InsertionKind.BLOCK]) == '["block"]'
    point = autogrow.InsertionPoint("0", "identity", "", True)
    assert point.kind is InsertionKind.IDENTITY and point.kind == "identity"
    points = autogrow.insertion_points(_mlp())
    assert {p.kind for p in points} == {InsertionKind.IDENTITY}
    with pytest.raises(autogrow.InvalidArgumentError, match="kind must be block or identity"):
        autogrow.deepen(_mlp(), after=autogrow.InsertionPoint("1", "wide", "", True))
