"""widen(..., symmetry="paired"): equal shares plus zero-sum noise over each unit's replicas.

The function stays exact (verified, and compared here on other inputs), the replicas' outgoing
weights differ, and their sum is the old unit's weight; the option reaches the optimizer
path, ``autogrow.op.widen``, the Grower, the CLI and checkpoints.
"""

from __future__ import annotations

import pytest
import torch
from models import assert_same_function, make
from torch import nn

import autogrow
from autogrow import cli
from autogrow.testing import randomize_constant_tensors
from autogrow.transforms.paired_noise import zero_sum_noise
from autogrow.transforms.widen import widen_with_plan


def _llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = randomize_constant_tensors(transformers.LlamaForCausalLM(cfg).eval())
    g = torch.Generator().manual_seed(1)
    return model, (torch.randint(0, 64, (2, 8), generator=g),), (torch.randint(0, 64, (3, 8)),)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "residual_mlp", "llama"])
def test_paired_widen_is_exact(name):
    model, example, test = _llama() if name == "llama" else make(name)
    model.eval()
    grown = widen_with_plan(model, 2.0, example_inputs=example, seed=0, symmetry="paired")
    assert grown.plan.symmetry == "paired" and grown.plan.pair_noise == 0.01
    assert sum(p.numel() for p in grown.model.parameters()) > sum(
        p.numel() for p in model.parameters()
    )
    assert_same_function(grown.model, model, test)


def _replicas(source: torch.Tensor) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(source.tolist()):
        groups.setdefault(s, []).append(i)
    return {s: idx for s, idx in groups.items() if len(idx) > 1}


@pytest.mark.parametrize("factor", [2.0, 2.5])
def test_replicas_differ_and_sum_to_the_original(factor):
    model, example, _ = make("mlp")
    grown = widen_with_plan(model, factor, example_inputs=example, seed=1, symmetry="paired")
    source = grown.plan.maps["fc2"].source  # fc's input units (its outputs are the logits)
    old, new = model.fc.weight.detach(), grown.model.fc.weight.detach()
    replicas = _replicas(source)
    assert replicas
    scale = float(new.std())
    for s, idx in replicas.items():
        block = new[:, idx]
        torch.testing.assert_close(block.sum(1), old[:, s], rtol=0, atol=1e-6)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):  # every pair of replicas differs on every weight
                assert (block[:, a] - block[:, b]).abs().min() > 0
        # the noise is small next to the weights: pair_noise (0.01) times their std
        noise = block - old[:, s : s + 1] / len(idx)
        assert noise.abs().max() < 10 * 0.01 * scale
        if len(idx) == 2:  # +N and -N
            torch.testing.assert_close(noise[:, 0], -noise[:, 1], rtol=0, atol=1e-6)


def test_without_noise_paired_is_the_equal_division():
    model, example, _ = make("mlp")
    paired = autogrow.widen(model, 2.0, example_inputs=example, seed=3, symmetry="paired",
                            pair_noise=0.0)  # fmt: skip
    none = autogrow.widen(model, 2.0, example_inputs=example, seed=3, symmetry="none")
    for (n, a), b in zip(paired.state_dict().items(), none.state_dict().values()):
        assert torch.equal(a, b), n
    again = autogrow.widen(model, 2.0, example_inputs=example, seed=3, symmetry="paired")
    other = autogrow.widen(model, 2.0, example_inputs=example, seed=3, symmetry="paired")
    assert torch.equal(again.fc2.weight, other.fc2.weight)  # the seed fixes the noise
    assert not torch.equal(again.fc2.weight, none.fc2.weight)


def test_zero_sum_noise_has_unit_variance_per_replica():
    g = torch.Generator().manual_seed(0)
    source = torch.tensor([0, 1, 2, 0, 0, 1])
    n = zero_sum_noise(torch.Size([20000, 6]), 1, source, g)
    torch.testing.assert_close(n[:, [0, 3, 4]].sum(1), torch.zeros(20000, dtype=n.dtype))
    assert torch.equal(n[:, 2], torch.zeros(20000, dtype=n.dtype))  # unit 2 has no replica
    for i in (0, 1, 3, 4, 5):
        assert abs(float(n[:, i].std()) - 1) < 0.03


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_pair_noise_is_refused(bad):
    model, example, _ = make("mlp")
    with pytest.raises(autogrow.InvalidArgumentError, match="pair_noise"):
        autogrow.widen(model, 2.0, example_inputs=example, symmetry="paired", pair_noise=bad)
    with pytest.raises(autogrow.InvalidArgumentError, match="pair_noise"):
        autogrow.op.widen(2.0, symmetry="paired", pair_noise=bad)


def test_unknown_symmetry_names_the_choices():
    with pytest.raises(autogrow.InvalidArgumentError, match="paired"):
        autogrow.op.widen(2.0, symmetry="mirror")


def test_paired_with_optimizer_state():
    model, example, test = make("residual_mlp")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(example[0]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    wide, new_opt = autogrow.widen(
        model, 2.0, example_inputs=example, seed=0, symmetry="paired", optimizer=opt
    )
    assert_same_function(wide, model, test)
    params = list(wide.parameters())
    assert [p for g in new_opt.param_groups for p in g["params"]] == params
    for p in params:
        assert new_opt.state[p]["exp_avg"].shape == p.shape


def test_grower_applies_paired_widening():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grower = autogrow.Grower({0: autogrow.op.widen(2.0, symmetry="paired")}, seed=0)
    x = torch.randn(16, 4)
    model(x).pow(2).mean().backward()
    opt.step()
    before = model(x).detach()
    grown, opt, _ = grower.step(0, model, opt)
    assert grown[0].out_features == 16
    torch.testing.assert_close(grown(x), before, rtol=1e-5, atol=1e-6)
    w = grown[2].weight.detach()
    assert not torch.equal(w[:, :8], w[:, 8:])  # uniform group: unit i and i + 8 are replicas


def test_cli_paired_and_checkpoint_round_trip(tmp_path, capsys):
    out = tmp_path / "wide"
    args = ["widen", "models:MLP", "--factor", "2", "--seed", "5", "--symmetry", "paired"]
    assert cli.main([*args, "--pair-noise", "0.05", "--out", str(out)]) == 0
    assert "widened" in capsys.readouterr().out
    wide = autogrow.load(out, trust=True)
    step = wide.autogrow_recipe.steps[0]
    assert (step.args["symmetry"], step.args["pair_noise"]) == ("paired", 0.05)
    reloaded = autogrow.load(autogrow.save(wide, tmp_path / "again"), trust=True)
    for (n, a), b in zip(wide.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), n
