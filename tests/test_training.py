"""autogrow.Grower in a plain training loop; the optimizers whose state autogrow grows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import autogrow
from autogrow.training import GrowthError
from autogrow.training.distributed import digest


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 4, generator=g), torch.randn(32, 3, generator=g)


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    x, y = _batch(step)
    return nn.functional.mse_loss(model(x), y)


def _train(grower, model, opt, sched, steps: int, log: list | None = None):
    for step in range(steps):
        _loss(model, step).backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()
        with torch.no_grad():
            before = _loss(model, 10_000).item()
        new = grower.step(step, model, opt, sched)
        if new[0] is not model and log is not None:
            with torch.no_grad():
                log.append((step, before, _loss(new[0], 10_000).item()))
        model, opt, sched = new
    return model, opt, sched


def test_plain_loop_grows_model_optimizer_and_schedule_with_the_loss_unchanged():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    grower = autogrow.Grower({3: autogrow.op.widen(2.0), 6: autogrow.op.deepen()}, seed=0)
    log: list = []
    model2, opt2, sched2 = _train(grower, model, opt, sched, 10, log)
    assert [s for s, _, _ in log] == [3, 6]
    for _, before, after in log:  # exact transforms: same loss right after growth
        assert after == pytest.approx(before, rel=1e-5)
    assert model2[0].out_features == 16 and len(model2) == 7
    assert opt2 is not opt and sched2.optimizer is opt2 and sched2.last_epoch == 10
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-2), T_max=20
    )
    for _ in range(10):
        reference.optimizer.step()
        reference.step()
    assert sched2.get_last_lr() == pytest.approx(reference.get_last_lr())  # the schedule went on
    assert opt2.state[model2[0].weight]["step"].item() == 10  # Adam's step count kept
    assert [e.step for e in grower.history] == [3, 6]


def test_same_seed_same_grown_model():
    digests = []
    for _ in range(2):
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        grower = autogrow.Grower({1: autogrow.op.widen(2.0)}, seed=123)
        model, opt, _ = _train(grower, model, opt, None, 3)
        digests.append(digest(model, opt))
    assert digests[0] == digests[1]


def test_rewarm_ramps_the_learning_rate_after_growth_and_leaves_the_schedule_alone():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    grower = autogrow.Grower({1: autogrow.op.widen(2.0)}, lr="rewarm", warmup=4, seed=0)
    seen: list[float] = []
    model, opt, sched = _train(grower, model, opt, sched, 2)
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    for step in range(2, 8):
        _loss(model, step).backward()
        scheduled = opt.param_groups[0]["lr"]
        opt.step()
        assert opt.param_groups[0]["lr"] == scheduled  # restored after the step
        sched.step()
        opt.zero_grad()
    expected = [0.1 * 0.9**s for s in range(2, 8)]
    factors = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # the hook registered after the grower's sees the scaled rate
    assert seen == pytest.approx([e * f for e, f in zip(expected, factors)])
    assert sched.get_last_lr() == pytest.approx([0.1 * 0.9**8])
    assert grower.rewarm.done


def test_plateau_triggers_growth_once():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the loss never improves
    grower = autogrow.Grower(on_plateau=autogrow.op.widen(2.0), patience=3, seed=0)
    for step in range(12):
        loss = _loss(model, 0)
        loss.backward()
        opt.step()
        opt.zero_grad()
        model, opt, _ = grower.step(step, model, opt, loss=loss)
    assert [e.step for e in grower.history] == [3]
    assert model[0].out_features == 16


def test_deepen_respects_param_groups_of_the_layer_before():
    model = _mlp()
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": weights, "weight_decay": 0.1, "lr": 1e-3}, {"params": biases, "lr": 2e-3}],
        lr=1e-3,
        weight_decay=0.0,
    )
    grower = autogrow.Grower({0: autogrow.op.deepen()})
    model, opt, _ = _train(grower, model, opt, None, 1)
    ids = [{id(p) for p in g["params"]} for g in opt.param_groups]
    new = model[4]  # the inserted identity layer
    assert id(new.weight) in ids[0] and id(new.bias) in ids[1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


# -- refusals: a clear AutogrowError before anything changes ---------------------------------


def test_bad_schedules_are_refused_at_construction():
    with pytest.raises(autogrow.InvalidArgumentError, match="ints >= 0"):
        autogrow.Grower({-1: autogrow.op.widen(2.0)})
    with pytest.raises(autogrow.InvalidArgumentError, match="must be an operation"):
        autogrow.Grower({5: "widen"})
    with pytest.raises(autogrow.InvalidArgumentError, match="factor must be > 1"):
        autogrow.op.widen(0.5)
    with pytest.raises(autogrow.InvalidArgumentError, match="lr must be one of"):
        autogrow.Grower({5: autogrow.op.deepen()}, lr="cosine")


def test_a_schedule_step_in_the_past_is_refused():
    model = _mlp()
    grower = autogrow.Grower({3: autogrow.op.widen(2.0)})
    with pytest.raises(GrowthError, match="schedule step 3 is in the past"):
        grower.step(10, model)
    assert model[0].out_features == 8
    grower.resume(9)  # the growth is already in the model (restored from a checkpoint)
    assert grower.step(10, model)[0] is model


def _snapshot(model, opt, sched):
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(sched.state_dict()),
    )


def test_an_operation_that_cannot_apply_changes_nothing():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    grower = autogrow.Grower({1: autogrow.op.widen({"no.such.module": 32})}, seed=0)
    _train(autogrow.Grower(), model, opt, sched, 1)
    before = _snapshot(model, opt, sched)
    _loss(model, 1).backward()
    opt.step()
    sched.step()
    before = _snapshot(model, opt, sched)
    grower.step(0, model, opt, sched)
    with pytest.raises(autogrow.GroupNotFoundError):
        grower.step(1, model, opt, sched)
    after = _snapshot(model, opt, sched)
    assert all(torch.equal(v, before[0][k]) for k, v in after[0].items())
    assert str(after[1]) == str(before[1]) and after[2] == before[2]


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adafactor(ps, lr=1e-2),
        lambda ps: torch.optim.LBFGS(ps),
    ],
    ids=["Adafactor", "LBFGS"],
)
def test_an_optimizer_that_cannot_be_grown_is_refused_on_the_first_step(make):
    model = _mlp()
    opt = make(model.parameters())
    grower = autogrow.Grower({5: autogrow.op.widen(2.0)})
    with pytest.raises(autogrow.InvalidArgumentError, match="cannot grow the state") as e:
        grower.step(0, model, opt)
    if isinstance(opt, torch.optim.Adafactor):
        assert "row_var" in str(e.value)


class _Custom(torch.optim.SGD):
    pass


def test_an_unknown_optimizer_is_refused():
    model = _mlp()
    with pytest.raises(autogrow.InvalidArgumentError, match="_Custom"):
        autogrow.Grower({1: autogrow.op.deepen()}).step(0, model, _Custom(model.parameters(), 0.1))


# -- every element-wise torch.optim optimizer ------------------------------------------------

OPTIMIZERS = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
    "RMSprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, centered=True),
    "Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, initial_accumulator_value=0.1),
    "Adamax": lambda ps: torch.optim.Adamax(ps, lr=1e-2),
    "NAdam": lambda ps: torch.optim.NAdam(ps, lr=1e-2),
    "RAdam": lambda ps: torch.optim.RAdam(ps, lr=1e-2),
    "Adadelta": lambda ps: torch.optim.Adadelta(ps, lr=1.0),
    "Rprop": lambda ps: torch.optim.Rprop(ps, lr=1e-2),
    "ASGD": lambda ps: torch.optim.ASGD(ps, lr=1e-2),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_elementwise_optimizer_is_grown(name):
    model = _mlp()
    opt = OPTIMIZERS[name](model.parameters())
    for step in range(3):
        _loss(model, step).backward()
        opt.step()
        opt.zero_grad()
    wide, wopt = autogrow.widen(model, 2.0, optimizer=opt, seed=0, symmetry="none")
    assert type(wopt) is type(opt)
    for p in wide.parameters():
        for key, v in wopt.state[p].items():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                assert v.shape == p.shape, (key, v.shape, p.shape)
    # rows of the first layer (its inputs did not grow) are replicated: a gradient statistic
    # of power k takes (1/count)**k (symmetry="none": equal shares), a weight-like entry is copied
    old, new = opt.state[model[0].weight], wopt.state[wide[0].weight]
    w, w_new = model[0].weight, wide[0].weight
    source = [int((w == row).all(dim=1).nonzero()[0]) for row in w_new]
    count = torch.bincount(torch.tensor(source), minlength=w.shape[0]).float()
    rules = autogrow.transforms.optimizer.STATE_RULES[type(opt)]
    for key, rule in rules.items():
        if rule is not None and isinstance(old.get(key), torch.Tensor) and old[key].ndim > 0:
            power, gradient = rule
            scale = (1 / count[source]) ** power if gradient else torch.ones(len(source))
            expected = old[key][source] * scale[:, None]
            assert torch.allclose(new[key], expected, rtol=1e-5, atol=1e-8), key
    x = _batch(0)[0]
    assert torch.allclose(wide(x), model(x), atol=1e-5)
    nn.functional.mse_loss(wide(x), _batch(0)[1]).backward()
    wopt.step()  # and it trains on
    assert all(torch.isfinite(p).all() for p in wide.parameters())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_elementwise_optimizer_carries_its_state_through_deepen(name):
    model = _mlp()
    opt = OPTIMIZERS[name](model.parameters())
    for step in range(3):
        _loss(model, step).backward()
        opt.step()
        opt.zero_grad()
    deep, dopt = autogrow.deepen(model, optimizer=opt)
    _loss(model, 3).backward()
    opt.step()
    _loss(deep, 3).backward()
    dopt.step()
    for i, j in ((0, 0), (2, 2), (4, 6)):  # the old layers move exactly as before
        assert torch.allclose(deep[j].weight, model[i].weight, atol=1e-6), (i, j)


def test_deepen_keeps_groups_in_model_order_so_a_fresh_optimizer_can_load_the_state():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _loss(model, 0).backward()
    opt.step()
    deep, dopt = autogrow.deepen(model, optimizer=opt)
    assert dopt.param_groups[0]["params"] == list(deep.parameters())
    fresh = torch.optim.Adam(deep.parameters(), lr=1e-2)  # what a resumed run builds
    fresh.load_state_dict(dopt.state_dict())
    for p in deep.parameters():
        assert {k: v.shape for k, v in fresh.state[p].items()} == {
            k: v.shape for k, v in dopt.state[p].items()
        }


def test_steps_must_increase_and_the_grower_state_round_trips():
    model = _mlp()
    grower = autogrow.Grower({4: autogrow.op.widen(2.0)}, seed=5)
    grower.step(0, model)
    grower.step(1, model)
    with pytest.raises(GrowthError, match="steps must increase"):
        grower.step(1, model)
    saved = grower.state_dict()
    again = autogrow.Grower({4: autogrow.op.widen(2.0)})
    again.load_state_dict(saved)
    assert again.seed == 5 and again.seed_for(4) == grower.seed_for(4)
    assert again.step(2, model)[0] is model
    wide = again.step(4, model)[0]  # a step without growth may be skipped
    assert wide is not model
