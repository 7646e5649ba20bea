"""autogrow.stack: depthwise stacking of trained layers (G_stack); not function-preserving.

The copies are the trained layers in the chosen order, the output change is measured (not
refused), the caller's model is untouched, the library's records (a transformers config's
layer count, ``layer_idx``) follow, the optimizer state is copied from each source layer,
save/load replays the step, and impossible cases raise errors that name the module.
"""

from __future__ import annotations

import pytest
import torch
from models import ResidualMLP, assert_unchanged, snapshot
from torch import nn

import autogrow
from autogrow.testing import randomize_constant_tensors
from autogrow.transforms.stack import StackPlan
from autogrow.verify import compare, run


def _residual(depth: int = 3) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = randomize_constant_tensors(ResidualMLP(depth=depth)).eval()
    return model, (torch.randn(4, 12),)


class LoopNet(nn.Module):
    """Layers in an nn.ModuleList that forward loops over, with named blocks elsewhere."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(n))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.head(x)


def _same_tensors(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(("order", "expected"), [("repeat", [0, 1, 2, 0, 1, 2]),
                                                 ("interleave", [0, 0, 1, 1, 2, 2])])  # fmt: skip
def test_layers_are_copies_in_the_order(order, expected):
    model, inputs = _residual(3)
    before = snapshot(model)
    grown = autogrow.stack_with_plan(model, 2, order=order, example_inputs=inputs)
    assert_unchanged(model, before)
    plan = grown.plan
    assert isinstance(plan, StackPlan)
    assert (plan.stacks, plan.old_depth, plan.new_depth, plan.order) == (("blocks",), 3, 6, order)
    assert list(plan.sources["blocks"]) == expected
    assert len(grown.model.blocks) == 6
    for i, src in enumerate(expected):
        assert _same_tensors(grown.model.blocks[i], model.blocks[src])
    copies = {id(p) for p in grown.model.parameters()}
    assert len(copies) == len(list(grown.model.parameters()))  # copies are independent tensors
    measured = compare(run(grown.model, inputs), run(model, inputs)).max_error
    assert plan.output_change == measured > 0  # reported, not refused


def test_factor_three_and_module_list_renumbered():
    torch.manual_seed(0)
    model, inputs = LoopNet(2), (torch.randn(3, 4),)
    deep = autogrow.stack(model, 3, example_inputs=inputs)
    assert [k for k in deep.layers._modules] == [str(i) for i in range(6)]
    for i in range(6):
        assert torch.equal(deep.layers[i].weight, model.layers[i % 2].weight)
    assert deep(inputs[0]).shape == (3, 2)


@pytest.mark.slow
def test_a_stage_after_its_downsampling_block():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    inputs = (torch.randn(1, 3, 32, 32),)
    grown = autogrow.stack_with_plan(model, 2, example_inputs=inputs)
    assert grown.plan.stacks == ("layer1", "layer2", "layer3", "layer4")
    assert grown.plan.sources["layer2"] == (0, 1, 1)  # block 0 downsamples: stays alone
    assert grown.plan.sources["layer1"] == (0, 1, 0, 1)
    assert len(grown.model.layer2) == 3 and grown.model(*inputs).shape == (1, 5)


def test_llama_layers_config_and_layer_idx():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = randomize_constant_tensors(transformers.LlamaForCausalLM(cfg).eval())
    inputs = (torch.randint(0, 64, (2, 8)),)
    grown = autogrow.stack_with_plan(model, 2, example_inputs=inputs)
    deep = grown.model
    assert grown.plan.stacks == ("model.layers",) and grown.plan.sources["model.layers"] == (
        0,
        1,
        0,
        1,
    )
    assert model.config.num_hidden_layers == 2 and deep.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in deep.model.layers] == [0, 1, 2, 3]
    if getattr(deep.config, "layer_types", None) is not None:
        assert len(deep.config.layer_types) == 4
    assert torch.equal(
        deep.model.layers[2].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight
    )
    assert 0 < grown.plan.output_change < float("inf")
    # generation with a KV cache indexes the cache by layer_idx: it must run on 4 layers
    out = deep.generate(inputs[0][:1], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 11)


def test_optimizer_state_is_copied_from_the_source_layer():
    model, inputs = _residual(2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(inputs[0]).pow(2).mean().backward()
    opt.step()
    deep, new_opt = autogrow.stack(model, 2, example_inputs=inputs, optimizer=opt)
    params = list(deep.parameters())
    assert [p for g in new_opt.param_groups for p in g["params"]] == params  # model order
    for i, src in enumerate([0, 1, 0, 1]):
        for q, p in zip(deep.blocks[i].parameters(), model.blocks[src].parameters()):
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(new_opt.state[q][key], opt.state[p][key])
            assert new_opt.state[q]["exp_avg"] is not opt.state[p]["exp_avg"]
    new_opt.zero_grad()
    deep(inputs[0]).pow(2).mean().backward()
    new_opt.step()  # trains on


def test_inplace_keeps_the_object_and_save_load_replays(tmp_path):
    torch.manual_seed(0)
    model = autogrow.seed_model("models:ResidualMLP", depth=2)
    inputs = (torch.randn(4, 12),)
    same = autogrow.stack(model, 2, order="interleave", example_inputs=inputs, inplace=True)
    assert same is model and len(model.blocks) == 4
    step = model.autogrow_recipe.steps[-1]
    assert (step.op, dict(step.args)) == (
        "stack",
        {"factor": 2, "order": "interleave", "stacks": ["blocks"]},
    )
    loaded = autogrow.load(autogrow.save(model, tmp_path / "ckpt"), trust=True)
    assert _same_tensors(loaded, model) and list(loaded.state_dict()) == list(model.state_dict())
    assert torch.equal(run(loaded, inputs), run(model, inputs))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"factor": 1}, autogrow.InvalidArgumentError, "factor must be an int >= 2"),
        ({"factor": 2.0}, autogrow.InvalidArgumentError, "factor must be an int >= 2"),
        ({"order": "mirror"}, autogrow.InvalidArgumentError, "order must be one of"),
        ({"stacks": ["nope"]}, autogrow.InvalidArgumentError, "no submodule 'nope'"),
        ({"stacks": ["stem"]}, autogrow.UnsupportedOpError, "'stem' is a Linear"),
        ({"tolerance": 1e-9}, autogrow.VerificationError, "changed by"),
    ],
)
def test_errors(kwargs, error, match):
    model, inputs = _residual(2)
    with pytest.raises(error, match=match):
        autogrow.stack(model, **{"factor": 2, **kwargs}, example_inputs=inputs)


def test_a_model_without_layer_stacks_is_refused():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(autogrow.UnsupportedOpError, match="no layer stack"):
        autogrow.stack(net)


def test_a_copy_that_cannot_run_is_refused_and_undone():
    class Scaled(LoopNet):  # one scale per layer, indexed by position: too few for 2n layers
        def __init__(self):
            super().__init__(2)
            self.scales = nn.Parameter(torch.ones(2))

        def forward(self, x):
            x = self.embed(x)
            for i, layer in enumerate(self.layers):
                x = x + self.scales[i] * torch.tanh(layer(x))
            return self.head(x)

    torch.manual_seed(0)
    model = Scaled()
    with pytest.raises(autogrow.VerificationError, match="stacked model failed to run"):
        autogrow.stack(model, 2, example_inputs=(torch.randn(2, 4),), inplace=True)
    assert len(model.layers) == 2  # undone
    deep = autogrow.stack(model, 2, example_inputs=(torch.randn(2, 4),), verify=False)
    assert len(deep.layers) == 4  # without the check, the caller gets what was asked for


def test_grower_stacks_at_a_scheduled_step():
    model, inputs = _residual(2)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    # a tolerance meant for exact growth does not apply to stacking
    grower = autogrow.Grower({1: autogrow.op.stack(2)}, seed=0, tolerance=1e-6)
    for step in range(3):
        model(inputs[0]).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        model, opt, sched = grower.step(step, model, opt, sched)
    assert len(model.blocks) == 4 and sched.last_epoch == 3
    assert [e.step for e in grower.history] == [1]
    with pytest.raises(autogrow.InvalidArgumentError, match="op.stack: factor"):
        autogrow.op.stack(1)
