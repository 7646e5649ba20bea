"""Deepen where the layers are counted per stage (a config's ``depths[i]``), where a block
returns outputs the model discards, and where the model's loop runs other modules between its
blocks (issue 12)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autogrow
from autogrow.adapters.hf_stacks import layer_stacks
from autogrow.transforms.depth import deepen_with_plan
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI

from benchmarks.hf_families import inputs, output, tiny  # noqa: E402 - needs transformers


def _round_trip(model: nn.Module, family: str, tmp_path) -> nn.Module:
    model.save_pretrained(tmp_path)
    return type(model).from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("family", ["resnet", "convnext", "swin"])
def test_layer_stacks_are_the_blocks_each_depths_entry_counts(family):
    model = tiny(family)
    stacks = layer_stacks(model)
    assert sorted(stacks.values()) == ["depths[0]", "depths[1]"]
    for container, field in stacks.items():
        index = int(field.removeprefix("depths[").removesuffix("]"))
        assert len(model.get_submodule(container)) == model.config.depths[index]
        # the blocks, not the stages that hold them
        assert all(not isinstance(m, nn.ModuleList) for m in model.get_submodule(container))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "convnext", "swin"])
def test_per_stage_deepen_is_exact_and_round_trips(family, tmp_path):
    model = tiny(family)
    depths = list(model.config.depths)
    deep = autogrow.deepen(model, example_inputs=inputs(family))
    assert list(model.config.depths) == depths  # the caller's model and config are untouched
    stacks = layer_stacks(deep)
    for container, field in stacks.items():
        index = int(field.removeprefix("depths[").removesuffix("]"))
        assert len(deep.get_submodule(container)) == deep.config.depths[index]
    assert sum(deep.config.depths) > sum(depths)
    x = inputs(family, seed=1)
    assert relative_error(output(deep, x), output(model, x)) < 1e-4
    loaded = _round_trip(deep, family, tmp_path)
    assert relative_error(output(loaded, x), output(deep, x)) == 0.0


def test_resnet_deepens_only_stages_whose_last_block_keeps_its_input():
    model = tiny("resnet")  # depths [1, 1]: stage 1's only block downsamples
    deep = autogrow.deepen(model, example_inputs=inputs("resnet"))
    assert deep.config.depths == [2, 1]
    x = inputs("resnet", seed=1)
    assert relative_error(output(deep, x), output(model, x)) < 1e-4


@pytest.mark.slow
def test_swin_new_block_takes_the_window_shift_its_config_builds(tmp_path):
    model = tiny("swin")
    deep = autogrow.deepen(model, example_inputs=inputs("swin"))
    built = _round_trip(deep, "swin", tmp_path)
    x = inputs("swin", seed=1)
    assert relative_error(output(built, x), output(deep, x)) == 0.0  # (forward sets shifts)
    for name, module in deep.named_modules():
        if hasattr(module, "shift_size"):
            assert module.shift_size == built.get_submodule(name).shift_size, name
    blocks = deep.swin.encoder.layers[0].blocks
    assert len(blocks) == 2 and blocks[1].shift_size != blocks[0].shift_size  # it alternates


def test_bloom_deepens_although_its_layers_return_attention_weights(tmp_path):
    model = tiny("bloom")
    deep = autogrow.deepen(model, example_inputs=inputs("bloom"))
    assert deep.config.n_layer == model.config.n_layer + 1
    x = inputs("bloom", seed=1)
    assert relative_error(output(deep, x), output(model, x)) < 1e-4
    loaded = _round_trip(deep, "bloom", tmp_path)
    assert relative_error(output(loaded, x), output(deep, x)) == 0.0


class _Block(nn.Module):
    """A residual block that also returns a second tensor (its branch's activations)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x, extra=None):
        h = torch.tanh(self.fc1(x))
        out = x + self.fc2(h)
        return out, h if extra is None else extra + h


class _Stack(nn.Module):
    def __init__(self, *, pass_along: bool, between: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.pos = nn.Linear(8, 8)  # shared, applied before every block when ``between``
        self.blocks = nn.ModuleList([_Block(8) for _ in range(2)])
        self.head = nn.Linear(8, 3)
        self.pass_along, self.between = pass_along, between

    def forward(self, x):
        x, extra = self.inp(x), None
        for block in self.blocks:
            if self.between:
                x = self.pos(x)
            x, second = block(x, extra)
            extra = second if self.pass_along else None
        return self.head(x)


def test_a_discarded_second_output_may_change_in_the_new_block():
    torch.manual_seed(0)
    model = _Stack(pass_along=False, between=False).eval()
    x = torch.randn(5, 4)
    deep = autogrow.deepen(model, example_inputs=(x,))
    assert len(deep.blocks) == 3
    with torch.no_grad():
        assert relative_error(deep(x), model(x)) < 1e-4


def test_a_second_output_passed_to_the_next_block_must_stay():
    torch.manual_seed(0)
    model = _Stack(pass_along=True, between=False).eval()
    x = torch.randn(5, 4)
    points = autogrow.insertion_points(model, (x,))
    assert not [p for p in points if p.kind == "block"]  # a copy would change what it passes


def test_modules_the_loop_runs_between_blocks_refuse_a_new_block():
    torch.manual_seed(0)
    model = _Stack(pass_along=False, between=True).eval()
    x = torch.randn(5, 4)
    with pytest.raises(autogrow.UnsupportedOpError, match="between the blocks of 'blocks'"):
        autogrow.deepen(model, after="blocks", example_inputs=(x,))
    assert not [p for p in autogrow.insertion_points(model, (x,)) if p.kind == "block"]
    deep = autogrow.deepen(model, example_inputs=(x,))  # identity layers elsewhere instead
    assert len(deep.blocks) == 2
    with torch.no_grad():
        assert relative_error(deep(x), model(x)) < 1e-4


@pytest.mark.slow
def test_timm_coat_deepens_its_serial_blocks_not_its_parallel_ones():
    timm = pytest.importorskip("timm")
    from autogrow.testing import randomize_constant_tensors

    torch.manual_seed(0)
    model = randomize_constant_tensors(timm.create_model("coat_tiny").eval())
    x = torch.randn(1, 3, 224, 224)
    grown = deepen_with_plan(model, example_inputs=(x,))
    assert [where for where, _ in grown.plan.places] == [f"serial_blocks{i}" for i in (1, 2, 3, 4)]
    assert len(grown.model.parallel_blocks) == len(model.parallel_blocks)
    with torch.no_grad():
        y = torch.randn(1, 3, 224, 224)
        assert relative_error(grown.model(y), model(y)) < 1e-4


@pytest.mark.parametrize("family", ["resnet", pytest.param("swin", marks=pytest.mark.slow)])
def test_stack_keeps_per_stage_depths_in_step_and_round_trips(family, tmp_path):
    model = tiny(family)
    stacked = autogrow.stack(model, 2, example_inputs=inputs(family))
    for container, field in layer_stacks(stacked).items():
        index = int(field.removeprefix("depths[").removesuffix("]"))
        assert len(stacked.get_submodule(container)) == stacked.config.depths[index]
    # a stage of one downsampling block gets no copy of it (ResNet's stage 1)
    assert stacked.config.depths == ([2, 1] if family == "resnet" else [2, 2])
    loaded = _round_trip(stacked, family, tmp_path)
    x = inputs(family, seed=1)
    assert relative_error(output(loaded, x), output(stacked, x)) == 0.0


class _MidNorm(nn.Module):
    """A module run once in the middle of the loop (not per block) is no reason to refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([_Block(8) for _ in range(3)])
        self.mid = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        for i, block in enumerate(self.blocks):
            x = block(x)[0]
            if i == 0:
                x = self.mid(x)
        return self.head(x)


def test_a_module_run_in_one_gap_only_does_not_block_deepening():
    torch.manual_seed(0)
    model = _MidNorm().eval()
    x = torch.randn(5, 4)
    deep = autogrow.deepen(model, after="blocks", example_inputs=(x,))
    assert len(deep.blocks) == 4
    with torch.no_grad():
        assert relative_error(deep(x), model(x)) < 1e-4
