"""Widening torchvision models: exact outputs, strictly larger, the original untouched.

A representative subset runs by default; `pytest -m slow` widens every classification model
in ``torchvision.models.list_models`` (the same list as ``python -m benchmarks.zoo``).
"""

import pytest
import torch
import torchvision

import autogrow
from autogrow.testing import randomize_constant_tensors
from autogrow.verify import compare, run

TOL = 1e-4
NEEDS_224 = ("vit_", "maxvit")  # patch embedding / partitions assert the configured size


def _setup(name: str, size: int = 64):
    torch.manual_seed(0)
    model = randomize_constant_tensors(torchvision.models.get_model(name), seed=0).eval()
    side = 224 if name.startswith(NEEDS_224) else (max(size, 80) if "inception" in name else size)
    return model, (torch.randn(2, 3, side, side),)


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _assert_exact_and_larger(model, wide, inputs):
    assert type(wide) is type(model)
    assert _params(wide) > _params(model)
    fresh = (torch.randn_like(inputs[0]),)
    assert compare(run(wide, fresh), run(model, fresh)).max_error <= TOL


SUBSET = [
    "resnet18", "resnext50_32x4d", "densenet121", "mobilenet_v2", "mobilenet_v3_small",
    "efficientnet_b0", "shufflenet_v2_x0_5", "regnet_y_400mf", "squeezenet1_1", "googlenet",
    "mnasnet0_5", "convnext_tiny", "alexnet", "inception_v3", "vit_b_32", "swin_t", "swin_v2_t",
    "maxvit_t",
]  # fmt: skip


@pytest.mark.parametrize("name", SUBSET)
def test_widen_by_1_5_is_exact_and_larger(name):
    model, inputs = _setup(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wide = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0)
    _assert_exact_and_larger(model, wide, inputs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "name", ["resnet18", "densenet121", "convnext_tiny", "vit_b_32", "swin_t", "mobilenet_v3_small"]
)
def test_widen_by_2_is_exact_and_larger(name):
    model, inputs = _setup(name)
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=1)
    _assert_exact_and_larger(model, wide, inputs)


def test_vit_heads_double_and_hidden_dim_follows():
    model, inputs = _setup("vit_b_32")
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)
    attn = wide.encoder.layers[0].self_attention
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (1536, 24, 64)
    assert wide.hidden_dim == 1536  # read by forward to reshape patches


def test_dict_of_module_widths_changes_only_those_groups():
    model, inputs = _setup("resnet18")
    wide = autogrow.widen(
        model, {"layer1.0.conv1": 96, "layer3.0.conv1": 1.5}, example_inputs=inputs
    )
    assert wide.layer1[0].conv1.out_channels == 96 and wide.layer1[0].conv2.in_channels == 96
    assert wide.layer3[0].conv1.out_channels == 384
    assert wide.layer2[0].conv1.out_channels == 128  # not requested: unchanged
    _assert_exact_and_larger(model, wide, inputs)


def test_grouped_conv_width_counts_all_groups():
    model, inputs = _setup("resnext50_32x4d")
    wide = autogrow.widen(model, {"layer1.0.conv2": 192}, example_inputs=inputs, seed=0)
    conv = wide.layer1[0].conv2
    # Its input is conv1's group (unchanged); its output: 32 groups of 6 instead of 4.
    assert (conv.in_channels, conv.out_channels, conv.groups) == (128, 192, 32)
    assert wide.layer1[0].conv3.in_channels == 192
    _assert_exact_and_larger(model, wide, inputs)
    with pytest.raises(autogrow.ConstraintError, match="multiple of 32"):
        autogrow.widen(model, {"layer1.0.conv2": 200}, example_inputs=inputs)


def test_widening_twice_stays_exact():
    model, inputs = _setup("resnet18")
    once = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0)
    twice = autogrow.widen(once, 1.5, example_inputs=inputs, seed=1)
    assert _params(twice) > _params(once)
    _assert_exact_and_larger(model, twice, inputs)


def test_classifier_logits_are_frozen():
    model, inputs = _setup("resnet18")
    with pytest.raises(autogrow.FrozenGroupError, match="fc"):
        autogrow.widen(model, {"fc": 2000}, example_inputs=inputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_every_torchvision_model_widens_exactly(name):
    model, inputs = _setup(name)
    inputs = (inputs[0][:1],)
    wide = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0)
    _assert_exact_and_larger(model, wide, inputs)
