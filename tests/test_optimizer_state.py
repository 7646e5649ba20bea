"""widen(optimizer=): the optimizer state grows with the model (docs/training-state.md).

Formulas pinned here: Adam's moments grow like gradients: along an axis whose units were
replicated (rows copied) a replica's first moment is its outgoing share ``s`` times the old one
and its second moment ``s**2`` times; along an axis contracted with replicated units (where the
weight took the share) they are copied; step counts are kept. SGD's momentum buffer grows like
the weights (the share on the contracted axis). The vision and transformer tests check the
reasons: Adam's grown moments equal what the grown model's own gradient gives, and stepping
along the grown momentum gives the same function as stepping the old model along its own.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from models import make
from torch import nn

import autogrow
from autogrow.transforms.mapping import UnitMap
from autogrow.transforms.optimizer import grow_optimizer
from autogrow.transforms.widen import AxisMap

ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, model[0].in_features, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _hand_wide_mlp(old: nn.Sequential, source: list[int], share: list[float]) -> nn.Sequential:
    """The Net2Wider student of ``old`` for a given hidden-unit mapping, written out by hand."""
    wide = nn.Sequential(nn.Linear(2, len(source)), nn.ReLU(), nn.Linear(len(source), 1))
    with torch.no_grad():
        wide[0].weight.copy_(old[0].weight[source])
        wide[0].bias.copy_(old[0].bias[source])
        wide[2].weight.copy_(old[2].weight[:, source] * torch.tensor(share))
        wide[2].bias.copy_(old[2].bias)
    return wide


# ----------------------------------------------------------------------------------------------
# hand-computed: Linear(2, 3) -> ReLU -> Linear(3, 1) widened to 4 hidden units
# ----------------------------------------------------------------------------------------------

SOURCE = [0, 1, 2, 1]  # new unit 3 replicates old unit 1
SHARE = [1.0, 0.25, 1.0, 0.75]  # unit 1's outgoing weight split 1/4 : 3/4


def _known_mappings() -> dict[str, list[AxisMap]]:
    m = UnitMap(torch.tensor(SOURCE), torch.tensor(SHARE, dtype=torch.float64))
    return {
        "0.weight": [AxisMap(0, m, reduce=False)],
        "0.bias": [AxisMap(0, m, reduce=False)],
        "2.weight": [AxisMap(1, m, reduce=True)],
    }


def _rows(t: torch.Tensor, power: int) -> torch.Tensor:
    """[r0, (1/4)^p r1, r2, (3/4)^p r1] (p=0: copied rows); written out, not via SOURCE."""
    return torch.stack([t[0], 0.25**power * t[1], t[2], 0.75**power * t[1]])


def _columns(t: torch.Tensor, power: int) -> torch.Tensor:
    """[c0, (1/4)^p c1, c2, (3/4)^p c1] (p=0: copied columns)."""
    return torch.stack([t[:, 0], 0.25**power * t[:, 1], t[:, 2], 0.75**power * t[:, 1]], dim=1)


def _expected(name: str, key: str, t: torch.Tensor) -> torch.Tensor:
    if name == "2.bias":
        return t  # not widened
    if key == "momentum_buffer":  # like the weights: fc1 rows copied, fc2 columns x share
        return _rows(t, 0) if name.startswith("0.") else _columns(t, 1)
    power = 2 if key.endswith("_sq") else 1  # like gradients: fc1 rows x share^p, fc2 copied
    return _rows(t, power) if name.startswith("0.") else _columns(t, 0)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    ],
    ids=["sgd", "sgd-nesterov-wd", "adam", "adamw", "adamw-amsgrad"],
)
def test_hand_computed_state_for_a_known_mapping(make_opt):
    old = _mlp()
    opt = make_opt(old.parameters())
    _train(old, opt, steps=3)
    wide = _hand_wide_mlp(old, SOURCE, SHARE)

    new_opt = grow_optimizer(opt, old, wide, _known_mappings())

    assert type(new_opt) is type(opt)
    assert new_opt.defaults == opt.defaults
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    assert {k: v for k, v in new_opt.param_groups[0].items() if k != "params"} == hyper
    assert new_opt.param_groups[0]["params"] == list(wide.parameters())
    for name, p in old.named_parameters():
        q = wide.get_parameter(name)
        before, after = opt.state[p], new_opt.state[q]
        assert after.keys() == before.keys()
        for key, value in before.items():
            if key == "step":
                assert torch.equal(after[key], value)  # step counts kept
                assert after[key] is not value
                continue
            expected = _expected(name, key, value)
            assert after[key].shape == q.shape
            torch.testing.assert_close(after[key], expected, rtol=1e-6, atol=0)


def test_widen_grows_adam_state_with_the_mapping_it_used():
    old = _mlp()
    opt = torch.optim.AdamW(old.parameters(), lr=1e-2, amsgrad=True)
    _train(old, opt, steps=3)

    wide, new_opt = autogrow.widen(old, {"0": 4}, optimizer=opt, symmetry="none", seed=0)

    # Read the mapping off the weights: the new unit 3 copies old unit r, both take share 1/2.
    (r,) = [j for j in range(3) if torch.equal(wide[0].weight[3], old[0].weight[j])]
    source = [0, 1, 2, r]
    share = torch.ones(4)
    share[[r, 3]] = 0.5
    for key, power in [("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)]:
        for name in ("0.weight", "0.bias"):
            before = opt.state[old.get_parameter(name)][key]
            expected = before[source] * share.view(-1, *[1] * (before.ndim - 1)) ** power
            after = new_opt.state[wide.get_parameter(name)][key]
            torch.testing.assert_close(after, expected, rtol=1e-6, atol=0)
        before = opt.state[old[2].weight][key]
        torch.testing.assert_close(new_opt.state[wide[2].weight][key], before[:, source])
        torch.testing.assert_close(new_opt.state[wide[2].bias][key], opt.state[old[2].bias][key])
    assert all(torch.equal(new_opt.state[q]["step"], torch.tensor(3.0)) for q in wide.parameters())


# ----------------------------------------------------------------------------------------------
# vision model and transformer: the grown state is what the grown model's gradient gives
# ----------------------------------------------------------------------------------------------


def _vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=5,
    )  # fmt: skip
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # zero-initialised: no gradient upstream
    return vit


def _cnn() -> tuple[nn.Module, tuple]:
    model, example, _ = make("small_cnn")
    return model, example


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    target = torch.arange(out.shape[0]) % out.shape[1]
    return nn.functional.cross_entropy(out, target)


def _one_zero_lr_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """One step with lr=0: the state records this batch's gradient, the weights stay put."""
    opt.zero_grad()
    _loss(model, x).backward()
    opt.step()


def _gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    _loss(model, x).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


CASES = {
    # name: (model factory, input, widen options)
    "cnn-split": (_cnn, None, {"symmetry": "split"}),
    "vit-none": (_vit, torch.randn(2, 3, 32, 32), {"symmetry": "none"}),
}


def _case(case: str) -> tuple[nn.Module, torch.Tensor, dict]:
    factory, x, options = CASES[case]
    built = factory()
    model, x = built if isinstance(built, tuple) else (built, x)
    x = x[0] if isinstance(x, tuple) else x
    return model.eval(), x, options  # eval: BatchNorm gives gradients without stat updates


@pytest.mark.parametrize("case", sorted(CASES))
def test_grown_adam_moments_equal_the_grown_models_own_gradient(case):
    model, x, options = _case(case)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, betas=(0.8, 0.9), weight_decay=0)
    _one_zero_lr_step(model, opt, x)

    wide, new_opt = autogrow.widen(
        model, 2.0, optimizer=opt, example_inputs=(x,), seed=0, **options
    )
    grads = _gradients(wide, x)

    grown = nonzero = 0
    for name, q in wide.named_parameters():
        state = new_opt.state[q]
        g = grads[name]
        assert state.keys() == ADAM_KEYS
        assert torch.equal(state["step"], torch.tensor(1.0))
        moments = [(state["exp_avg"], 0.2 * g), (state["exp_avg_sq"], 0.1 * g * g)]
        nonzero += bool(g.abs().max() > 0)
        for moment, expected in moments:
            assert moment.shape == q.shape, name
            scale = expected.abs().max().item()
            assert (moment - expected).abs().max().item() <= 1e-4 * scale + 1e-12, name
        grown += q.shape != model.get_parameter(name).shape
    assert grown > 0
    assert nonzero == len(grads)  # every comparison is between non-trivial tensors


@pytest.mark.parametrize("case", sorted(CASES))
def test_stepping_along_the_grown_momentum_moves_the_function_as_before(case):
    model, x, options = _case(case)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    _one_zero_lr_step(model, opt, x)  # the buffer is now this batch's gradient
    wide, new_opt = autogrow.widen(
        model, 2.0, optimizer=opt, example_inputs=(x,), seed=0, **options
    )
    eps = 2.0
    with torch.no_grad():
        before = model(x)
        for p in model.parameters():
            p.sub_(eps * opt.state[p]["momentum_buffer"])
        for q in wide.parameters():
            assert new_opt.state[q]["momentum_buffer"].shape == q.shape
            q.sub_(eps * new_opt.state[q]["momentum_buffer"])
        moved, wide_moved = model(x), wide(x)
    change = (moved - before).abs().max().item()
    assert change > 1e-2 * before.abs().max().item()  # the step really changes the function
    assert (wide_moved - moved).abs().max().item() <= 1e-4 * moved.abs().max().item()


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_continues_after_growth(case):
    factory, x, _ = CASES[case]
    built = factory()
    model, x = built if isinstance(built, tuple) else (built, x)
    x = x[0] if isinstance(x, tuple) else x
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        _loss(model, x).backward()
        opt.step()

    wide, new_opt = autogrow.widen(model, 2.0, optimizer=opt, example_inputs=(x,), seed=0)
    for _ in range(3):
        new_opt.zero_grad()
        loss = _loss(wide, x)
        loss.backward()
        new_opt.step()
        assert torch.isfinite(loss)
    assert all(torch.equal(new_opt.state[q]["step"], torch.tensor(5.0)) for q in wide.parameters())
    assert all(torch.equal(opt.state[p]["step"], torch.tensor(2.0)) for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# contract: what is left alone, what is refused
# ----------------------------------------------------------------------------------------------


def test_inplace_leaves_the_old_optimizer_untouched():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, steps=2)
    old_params = list(model.parameters())
    snapshot = {id(p): opt.state[p]["momentum_buffer"].clone() for p in old_params}

    wide, new_opt = autogrow.widen(model, 2.0, optimizer=opt, inplace=True, seed=0)

    assert wide is model and wide[0].out_features == 6
    assert opt.param_groups[0]["params"] == old_params  # still the old parameters
    for p in old_params:
        assert torch.equal(opt.state[p]["momentum_buffer"], snapshot[id(p)])
    assert new_opt.param_groups[0]["params"] == list(wide.parameters())
    _train(wide, new_opt, steps=2)  # stepping the new one does not touch the old state
    for p in old_params:
        assert torch.equal(opt.state[p]["momentum_buffer"], snapshot[id(p)])


def test_unchanged_parameters_keep_a_copy_of_their_state_and_groups_stay_as_they_were():
    model = _mlp()
    frozen_out = model[2]
    opt = torch.optim.Adam(
        [{"params": model[0].parameters(), "lr": 1e-2}, {"params": [frozen_out.bias], "lr": 1e-3}]
    )
    _train(model, opt, steps=2)  # model[2].weight is trained by nobody: not in the optimizer

    wide, new_opt = autogrow.widen(model, 2.0, optimizer=opt, seed=0)

    assert [g["lr"] for g in new_opt.param_groups] == [1e-2, 1e-3]
    assert new_opt.param_groups[0]["params"] == [wide[0].weight, wide[0].bias]
    assert new_opt.param_groups[1]["params"] == [wide[2].bias]
    assert wide[2].weight not in new_opt.state
    old_bias, new_bias = opt.state[frozen_out.bias], new_opt.state[wide[2].bias]
    for key in ADAM_KEYS:
        assert torch.equal(new_bias[key], old_bias[key])
        assert new_bias[key].data_ptr() != old_bias[key].data_ptr()


def test_sgd_without_momentum_has_no_state_to_grow():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _train(model, opt, steps=1)
    wide, new_opt = autogrow.widen(model, 2.0, optimizer=opt, seed=0)
    assert len(opt.state) == 0 and len(new_opt.state) == 0
    _train(wide, new_opt, steps=1)


def test_unsupported_optimizer_is_refused_before_the_model_changes():
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(autogrow.InvalidArgumentError, match=r"torch\.optim\.lbfgs\.LBFGS"):
        autogrow.widen(model, 2.0, optimizer=opt, inplace=True)
    assert model[0].out_features == 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_state_entry_is_refused_by_name():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt, steps=1)
    opt.state[model[0].weight]["my_ema"] = torch.zeros(3, 2)
    with pytest.raises(autogrow.InvalidArgumentError, match="my_ema"):
        autogrow.widen(model, 2.0, optimizer=opt)


def test_parameter_outside_the_model_is_refused_before_the_model_changes():
    model = _mlp()
    stray = nn.Parameter(torch.zeros(5))
    opt = torch.optim.SGD([*model.parameters(), stray], lr=0.1, momentum=0.9)
    with pytest.raises(autogrow.InvalidArgumentError, match=r"shape \(5,\).*not in the model"):
        autogrow.widen(model, 2.0, optimizer=opt, inplace=True)
    assert model[0].out_features == 3


def test_without_optimizer_widen_returns_just_the_model():
    model = _mlp()
    assert isinstance(autogrow.widen(model, 2.0, seed=0), nn.Sequential)


# -- deepen(optimizer=) ------------------------------------------------------------------------


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, amsgrad=True),
], ids=["sgd", "adam", "adamw-amsgrad"])  # fmt: skip
def test_deepen_keeps_the_old_state_and_the_next_step_moves_old_layers_as_before(make_opt):
    # With identity layers after a ReLU the old parameters get the same gradients in the
    # deeper model, so one step of the carried optimizer moves them exactly as before.
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    opt = make_opt(model.parameters())
    _train(model, opt, 3)
    before = copy.deepcopy(opt.state_dict())
    deep, deep_opt = autogrow.deepen(model, after=["1", "3"], optimizer=opt)
    assert type(deep_opt) is type(opt) and deep_opt is not opt
    old_names = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    new_names = ["0.weight", "0.bias", "4.weight", "4.bias", "8.weight", "8.bias"]
    for o, d in zip(old_names, new_names):
        p, q = model.get_parameter(o), deep.get_parameter(d)
        assert _state_equal(opt.state[p], deep_opt.state[q])
        assert all(opt.state[p][k] is not deep_opt.state[q][k] for k in opt.state[p])
    params = deep_opt.param_groups[0]["params"]
    assert len(params) == len(list(deep.parameters())) == 10
    assert {id(p) for p in params} == {id(p) for p in deep.parameters()}
    for name in ("2.weight", "2.bias", "6.weight", "6.bias"):  # the identity layers
        assert deep.get_parameter(name) not in deep_opt.state

    x = torch.randn(16, 4)
    for net, o in ((model, opt), (deep, deep_opt)):
        o.zero_grad()
        net(x).pow(2).mean().backward()
        o.step()
    for o, d in zip(old_names, new_names):
        torch.testing.assert_close(model.get_parameter(o), deep.get_parameter(d))
    assert opt.state_dict()["state"].keys() == before["state"].keys()


def test_deepen_puts_new_weights_and_biases_in_the_groups_of_the_layer_they_follow():
    model = _mlp()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
    )
    deep, deep_opt = autogrow.deepen(model, optimizer=opt)
    groups = [{id(p) for p in g["params"]} for g in deep_opt.param_groups]
    assert [g["weight_decay"] for g in deep_opt.param_groups] == [0.1, 0.0]
    new = deep[2]  # the identity Linear after the ReLU
    assert id(new.weight) in groups[0] and id(new.bias) in groups[1]
    assert sum(map(len, groups)) == len(list(deep.parameters()))


def test_deepen_with_optimizer_inplace_and_frozen_parameters():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    _train(model, opt, 2)
    frozen = model[0].weight
    deep, deep_opt = autogrow.deepen(model, optimizer=opt, inplace=True)
    assert deep is model
    assert len(opt.param_groups[0]["params"]) == 3  # the given optimizer is untouched
    params = deep_opt.param_groups[0]["params"]
    assert all(p is not frozen for p in params)  # not added just because it is not in opt
    assert len(params) == 3 + 2
    _train(deep, deep_opt, 2)


def test_deepen_zeroed_blocks_train_with_the_carried_optimizer():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    opt.step()
    deep, deep_opt = autogrow.deepen(model, after="layer4", optimizer=opt, example_inputs=(x,))
    assert len(deep_opt.param_groups[0]["params"]) == len(list(deep.parameters()))
    assert torch.equal(
        deep_opt.state[deep.layer4[0].conv1.weight]["momentum_buffer"],
        opt.state[model.layer4[0].conv1.weight]["momentum_buffer"],
    )
    assert deep.layer4[2].conv1.weight not in deep_opt.state
    deep.train()
    deep_opt.zero_grad()
    deep(x).sum().backward()
    deep_opt.step()
    assert "momentum_buffer" in deep_opt.state[deep.layer4[2].conv1.weight]


def test_deepen_refuses_an_unsupported_optimizer_before_changing_anything():
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1)
    with pytest.raises(autogrow.InvalidArgumentError, match="LBFGS"):
        autogrow.deepen(model, optimizer=opt, inplace=True)
    assert len(model) == 3


def test_deepen_puts_new_layers_in_the_group_of_the_layer_before_them():
    model = _mlp()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters()}], lr=0.01
    )
    deep, deep_opt = autogrow.deepen(model, optimizer=opt)  # an identity Linear after the ReLU
    first, second = ({id(p) for p in g["params"]} for g in deep_opt.param_groups)
    assert {id(p) for p in deep[2].parameters()} <= first
    assert [g["lr"] for g in deep_opt.param_groups] == [0.1, 0.01]
    assert len(second) == 2
