"""autogrow.deepen (Net2DeeperNet) and autogrow.insertion_points.

Every deepened model must compute the original function (1e-4 max relative error, eval mode)
on fresh inputs, hold more Linear/Conv layers, and leave the original untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from pprint import pformat

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from models import assert_same_function, assert_unchanged, randomize_norms, snapshot
from test_property_random_dags import _n, build_model, make_inputs, net_specs
from torch import nn

import autogrow
from autogrow.testing import randomize_constant_tensors
from autogrow.verify import compare, run

TOL = 1e-4
PARAMETRIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _layers(model: nn.Module) -> int:
    return sum(isinstance(m, PARAMETRIC) for m in model.modules())


def _err(new: nn.Module, old: nn.Module, inputs: tuple) -> float:
    return compare(run(new, inputs), run(old, inputs)).max_error


def _assert_deeper_and_exact(old: nn.Module, new: nn.Module, inputs: tuple) -> float:
    assert type(new) is type(old) and new is not old
    assert _layers(new) > _layers(old)
    fresh = (torch.randn_like(inputs[0]),)
    err = max(_err(new, old, inputs), _err(new, old, fresh))
    assert err <= TOL, f"max relative error {err:.3g}"
    return err


# --------------------------------------------------------------------------------------------
# 1. torchvision models, default insertion points
# --------------------------------------------------------------------------------------------

TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "vgg11_bn", "alexnet", "mobilenet_v2",
    "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "densenet121", "regnet_y_400mf",
    "shufflenet_v2_x1_0", "googlenet", "vit_b_16", "swin_t",
]  # fmt: skip
# models whose default is a new block per stage (the rest get identity layers)
BLOCKS = {
    "resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small",
    "efficientnet_b0", "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t",
}  # fmt: skip


def _tv(name: str) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    model = randomize_constant_tensors(torchvision.models.get_model(name), seed=0).eval()
    side = 224 if name.startswith(("vit_", "swin")) else 64
    return model, (torch.randn(2, 3, side, side),)


@pytest.mark.parametrize("name", TORCHVISION)
def test_default_deepen_torchvision(name):
    model, inputs = _tv(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deep = autogrow.deepen(model, example_inputs=inputs)
    _assert_deeper_and_exact(model, deep, inputs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    new_blocks = len(list(deep.modules())) - len(list(model.modules()))
    if name in BLOCKS:
        assert new_blocks > 3  # whole blocks, not a single identity stack
    else:
        assert 2 <= new_blocks <= 3  # one identity stack: layer (+ BatchNorm) + activation


# --------------------------------------------------------------------------------------------
# 2. hand-written MLPs and CNNs, every activation
# --------------------------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardswish": nn.Hardswish,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
FUNCTIONAL = {
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
    "softplus": F.softplus,
    "identity": lambda x: x,
}


def _mlp(act: str) -> nn.Sequential:
    torch.manual_seed(0)
    a = ACTIVATIONS[act]
    return nn.Sequential(nn.Linear(6, 12), a(), nn.Linear(12, 10), a(), nn.Linear(10, 3))


def _cnn(act: str) -> nn.Sequential:
    torch.manual_seed(0)
    a = ACTIVATIONS[act]
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        a(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        a(),
        nn.Conv2d(8, 6, 1),
        a(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    return randomize_norms(model)


class FunctionalMLP(nn.Module):
    """Activations applied in forward, so deepening fc1 wraps it in a Sequential."""

    def __init__(self, act: str):
        super().__init__()
        torch.manual_seed(0)
        self.act = act
        self.fc1, self.fc2, self.fc = nn.Linear(5, 9), nn.Linear(9, 7), nn.Linear(7, 2)

    def forward(self, x):
        f = FUNCTIONAL[self.act]
        return self.fc(f(self.fc2(f(self.fc1(x)))))


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_mlp_every_position_every_activation(act):
    model, x = _mlp(act), (torch.randn(16, 6),)
    snap = snapshot(model)
    for after in ["0", "1", "2", "3", ["0", "3"]]:
        deep = autogrow.deepen(model, after=after, n=2, example_inputs=x)
        _assert_deeper_and_exact(model, deep, x)
    assert_unchanged(model, snap)
    deep = autogrow.deepen(model, after="1", example_inputs=x)
    idempotent = act in ("relu", "relu6")
    # Linear = I, then a copy of an idempotent activation or PReLU(1)
    assert isinstance(deep[2], nn.Linear) and torch.equal(deep[2].weight, torch.eye(12))
    assert isinstance(deep[3], type(model[1]) if idempotent else nn.PReLU)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_cnn_every_position_every_activation(act):
    model, x = _cnn(act), (torch.randn(4, 3, 10, 10),)
    snap = snapshot(model)
    for after in ["0", "1", "2", "3", "4", "6", "8"]:
        deep = autogrow.deepen(model, after=after, example_inputs=x)
        _assert_deeper_and_exact(model, deep, x)
    assert_unchanged(model, snap)
    deep = autogrow.deepen(model, after="3", example_inputs=x)
    new = deep[4]  # after the depthwise conv: a depthwise identity
    assert isinstance(new, nn.Conv2d) and new.groups == 8 and new.kernel_size == (3, 3)
    assert isinstance(deep[5], nn.BatchNorm2d)  # the model uses BatchNorm2d


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_functional_mlp_wraps_the_module(act):
    model, x = FunctionalMLP(act), (torch.randn(16, 5),)
    deep = autogrow.deepen(model, after=["fc1", "fc2"], example_inputs=x)
    _assert_deeper_and_exact(model, deep, x)
    assert isinstance(deep.fc1, nn.Sequential) and deep.fc1[0].out_features == 9
    keys = set(deep.state_dict())
    assert {"fc1.0.weight", "fc1.1.weight", "fc1.2.weight", "fc.weight"} <= keys
    assert "fc1.weight" not in keys
    # loading the old weights into the wrapped layer: fc1.X -> fc1.0.X
    renamed = {k.replace("fc1.", "fc1.0.", 1): v for k, v in model.state_dict().items()}
    assert torch.equal(renamed["fc1.0.weight"], deep.state_dict()["fc1.0.weight"])


def test_default_on_plain_mlp_goes_after_the_last_hidden_activation():
    model, x = _mlp("relu"), (torch.randn(8, 6),)
    deep = autogrow.deepen(model, example_inputs=x)
    assert [type(m) for m in deep] == [
        nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    assert torch.equal(deep[4].weight, torch.eye(10))
    _assert_deeper_and_exact(model, deep, x)


def test_sequential_with_named_children_gets_named_new_layers():
    # Sequential.insert renumbers children and fails on an OrderedDict-built Sequential.
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(6, 10), act=nn.ReLU(), fc2=nn.Linear(10, 3))
    ).eval()
    x = (torch.randn(8, 6),)
    before = snapshot(model)
    deep = autogrow.deepen(model, after=["act"], example_inputs=x)
    assert list(deep._modules) == ["fc1", "act", "grown0", "grown1", "fc2"]
    assert torch.equal(deep.grown0.weight, torch.eye(10))
    assert list(model._modules) == ["fc1", "act", "fc2"]
    assert_unchanged(model, before)
    _assert_deeper_and_exact(model, deep, x)
    deeper = autogrow.deepen(deep, after=["grown1"], example_inputs=x)
    assert list(deeper._modules) == ["fc1", "act", "grown0", "grown1", "grown2", "grown3", "fc2"]
    _assert_deeper_and_exact(model, deeper, x)


def test_identity_layers_are_exact_in_train_mode_without_batchnorm():
    model, x = _mlp("gelu"), (torch.randn(8, 6),)
    deep = autogrow.deepen(model, after="1", example_inputs=x)
    assert torch.allclose(deep.train()(x[0]), model.train()(x[0]), atol=1e-6)


# --------------------------------------------------------------------------------------------
# 3. stages: n blocks at the end
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stage", ["layer1", "layer3"])
def test_resnet_stage_gets_n_blocks(name, stage):
    model, inputs = _tv(name)
    deep = autogrow.deepen(model, after=stage, n=3, example_inputs=inputs)
    old, new = getattr(model, stage), getattr(deep, stage)
    assert len(new) == len(old) + 3
    last = new[-1]
    conv = last.conv3 if name == "resnet50" else last.conv2
    bn = last.bn3 if name == "resnet50" else last.bn2
    assert not conv.weight.any() and not bn.bias.any() and not bn.running_mean.any()
    assert bn.weight.abs().min() > 0  # the norm weight is kept: gradients still flow
    assert all(len(getattr(deep, s)) == len(getattr(model, s)) for s in ["layer2", "layer4"])
    _assert_deeper_and_exact(model, deep, inputs)


def test_vit_encoder_layers_get_a_layer():
    model, inputs = _tv("vit_b_16")
    inputs = (inputs[0][:1],)
    deep = autogrow.deepen(model, after="encoder.layers", example_inputs=inputs)
    assert len(deep.encoder.layers) == 13
    new = deep.encoder.layers[-1]
    assert not new.self_attention.out_proj.weight.any() and not new.mlp[3].weight.any()
    assert new.mlp[0].weight.any() and new.self_attention.in_proj_weight.any()
    _assert_deeper_and_exact(model, deep, inputs)


def test_block_name_inserts_after_that_block_and_point_objects_work():
    model, inputs = _tv("mobilenet_v2")
    points = autogrow.insertion_points(model, inputs)
    blocks = [p for p in points if p.kind == "block"]
    assert [p.where for p in blocks][:2] == ["features.3", "features.5"]
    assert all("exact" in str(p) for p in points)
    deep = autogrow.deepen(model, after=blocks[1], example_inputs=inputs)
    assert len(deep.features) == len(model.features) + 1
    assert type(deep.features[6]) is type(model.features[5])
    _assert_deeper_and_exact(model, deep, inputs)
    ident = next(p for p in points if p.kind == "identity" and p.where == "features.0.2")
    deep = autogrow.deepen(model, after=ident, example_inputs=inputs)
    _assert_deeper_and_exact(model, deep, inputs)


def test_non_residual_stage_falls_back_to_identity_layers():
    model, inputs = _tv("shufflenet_v2_x1_0")
    deep = autogrow.deepen(model, after="stage2", example_inputs=inputs)
    assert len(deep.stage2) == len(model.stage2) + 3  # conv = I, BatchNorm = I, PReLU(1)
    _assert_deeper_and_exact(model, deep, inputs)
    with pytest.raises(autogrow.UnsupportedOpError, match="not a residual block"):
        autogrow.deepen(
            model,
            after=autogrow.InsertionPoint("stage2", "block", "", True),
            example_inputs=inputs,
        )


# --------------------------------------------------------------------------------------------
# API: errors, inplace, train-mode analysis
# --------------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_with_the_name():
    model, x = _mlp("relu"), (torch.randn(2, 6),)
    for n in (0, -1, 1.5, True):
        with pytest.raises(autogrow.InvalidArgumentError, match="n must be"):
            autogrow.deepen(model, n=n, example_inputs=x)
    with pytest.raises(autogrow.InvalidArgumentError, match="no submodule 'nope'"):
        autogrow.deepen(model, after="nope", example_inputs=x)
    with pytest.raises(autogrow.InvalidArgumentError, match="more than once"):
        autogrow.deepen(model, after=["0", "0"], example_inputs=x)
    with pytest.raises(autogrow.InvalidArgumentError, match="after must be"):
        autogrow.deepen(model, after=3, example_inputs=x)
    with pytest.raises(autogrow.InvalidArgumentError):
        autogrow.deepen("not a model")


def test_modulelist_that_is_not_residual_is_refused():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in "ab")

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model, x = Loop(), (torch.randn(3, 4),)
    with pytest.raises(autogrow.UnsupportedOpError, match="'layers'.*ModuleList"):
        autogrow.deepen(model, after="layers", example_inputs=x)
    deep = autogrow.deepen(model, after="layers.1", example_inputs=x)  # inside: identity stack
    _assert_deeper_and_exact(model, deep, x)


def test_inplace_success_and_failure_restore():
    model, x = _mlp("tanh"), (torch.randn(4, 6),)
    reference = run(model, x)
    out = autogrow.deepen(model, after="1", inplace=True, example_inputs=x)
    assert out is model and len(model) == 7
    assert compare(run(model, x), reference).max_error <= TOL

    class ReadsWeight(nn.Module):  # forward reads fc1.weight: wrapping fc1 breaks it
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x))) + self.fc1.weight.sum()

    model, x = ReadsWeight(), (torch.randn(4, 3),)
    snap = snapshot(model)
    with pytest.raises(autogrow.VerificationError, match="failed to run"):
        autogrow.deepen(model, after="fc1", inplace=True, example_inputs=x)
    assert_unchanged(model, snap)
    assert isinstance(model.fc1, nn.Linear)


def test_analysis_never_trains_and_flags_are_kept():
    model, inputs = _tv("resnet18")
    model.train()
    stats = model.bn1.running_mean.clone()
    deep = autogrow.deepen(model, example_inputs=inputs)
    autogrow.insertion_points(model, inputs)
    assert torch.equal(model.bn1.running_mean, stats)
    assert model.training and model.bn1.training and deep.training


def test_insertion_points_are_printable():
    model, x = _cnn("gelu"), (torch.randn(2, 3, 8, 8),)
    points = autogrow.insertion_points(model, x)
    text = "\n".join(map(str, points))
    assert "Conv2d(8, 8, 3x3, depthwise)=I" in text and "PReLU(8, init=1)" in text
    assert "BatchNorm2d(8)=I(eval)" in text and "exact in eval mode" in text


# --------------------------------------------------------------------------------------------
# 4. widen -> deepen -> widen -> deepen
# --------------------------------------------------------------------------------------------


def test_widen_deepen_chain_cnn():
    model, x = _cnn("relu"), (torch.randn(4, 3, 10, 10),)
    m1 = autogrow.widen(model, 1.5, example_inputs=x, seed=0)
    m2 = autogrow.deepen(m1, after=["2", "4"], example_inputs=x)
    m3 = autogrow.widen(m2, 1.5, example_inputs=x, seed=1)
    m4 = autogrow.deepen(m3, example_inputs=x)
    assert _layers(m4) > _layers(m2) > _layers(model)
    assert sum(p.numel() for p in m3.parameters()) > sum(p.numel() for p in m2.parameters())
    _assert_deeper_and_exact(model, m4, x)


def test_widen_deepen_chain_resnet18():
    model, inputs = _tv("resnet18")
    m = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0)
    m = autogrow.deepen(m, example_inputs=inputs)
    m = autogrow.widen(m, 1.25, example_inputs=inputs, seed=1)
    m = autogrow.deepen(m, after="layer2", n=2, example_inputs=inputs)
    assert len(m.layer2) == 5 and m.layer2[4].conv1.out_channels > 128
    _assert_deeper_and_exact(model, m, inputs)


# --------------------------------------------------------------------------------------------
# 5. random architectures: exact or a clean refusal
# --------------------------------------------------------------------------------------------


@settings(
    max_examples=_n(40),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), weight_seed=st.integers(0, 1000), n=st.integers(1, 2))
def test_deepen_random_dag(data, weight_seed, n):
    spec = data.draw(net_specs(), label="spec")
    model = build_model(spec, weight_seed)
    model.train(data.draw(st.booleans(), label="train_mode"))
    names = [name for name, _ in model.named_modules() if name]
    after = data.draw(st.one_of(st.none(), st.sampled_from(names)), label="after")
    note(f"spec = {pformat(spec)}\nweight_seed={weight_seed} after={after!r} n={n}")
    example = make_inputs(spec, 3, weight_seed + 7)
    test_inputs = make_inputs(spec, 5, weight_seed + 8)
    snap = snapshot(model)
    try:
        deep = autogrow.deepen(model, after=after, n=n, example_inputs=example)
    except autogrow.AutogrowError as e:
        event(f"refused: {type(e).__name__}")
        note(f"refused: {e}")
        assert_unchanged(model, snap)
        return
    event("deepened")
    assert_unchanged(model, snap)
    assert type(deep) is type(model) and deep is not model
    assert _layers(deep) > _layers(model)
    assert_same_function(deep, model, test_inputs)
    assert_same_function(deep, model, example)


# --------------------------------------------------------------------------------------------
# 6. the new layers learn
# --------------------------------------------------------------------------------------------


def _train(model: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    target = torch.randn_like(model(x))
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_identity_layers_learn(act):
    model, x = _mlp(act), torch.randn(32, 6)
    deep = autogrow.deepen(model, after="1", example_inputs=(x,))
    new_linear, new_act = deep[2], deep[3]
    w0 = new_linear.weight.detach().clone()
    a0 = [p.detach().clone() for p in new_act.parameters()]
    _train(deep, x)
    assert not torch.equal(new_linear.weight, w0)
    assert all(not torch.equal(p, q) for p, q in zip(new_act.parameters(), a0))


@pytest.mark.parametrize("name", ["resnet18", "vit_b_16"])
def test_zeroed_blocks_learn(name):
    model, inputs = _tv(name)
    x = inputs[0][:2] if name == "resnet18" else inputs[0][:1]
    deep = autogrow.deepen(model, example_inputs=(x,))
    new = deep.layer4[-1] if name == "resnet18" else deep.encoder.layers[-1]
    before = {k: v.detach().clone() for k, v in new.named_parameters()}
    _train(deep, x, steps=3)
    changed = {k for k, v in new.named_parameters() if not torch.equal(v, before[k])}
    zeroed = {"conv2.weight"} if name == "resnet18" else {"mlp.3.weight"}
    upstream = {"conv1.weight"} if name == "resnet18" else {"mlp.0.weight"}
    assert zeroed <= changed, "the zeroed branch end received no gradient"
    assert upstream <= changed, "layers before the zeroed one never learn"


def test_model_without_submodules_is_refused_clearly():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(8, 4))
            self.w2 = nn.Parameter(torch.randn(2, 8))

        def forward(self, x):
            return F.linear(torch.tanh(F.linear(x, self.w1)), self.w2)

    model, x = Functional(), (torch.randn(3, 4),)
    assert autogrow.insertion_points(model, x) == []
    with pytest.raises(autogrow.UnsupportedOpError, match="pass after="):
        autogrow.deepen(model, example_inputs=x)
    with pytest.raises(autogrow.InvalidArgumentError, match="whole model"):
        autogrow.deepen(model, after="", example_inputs=x)


@pytest.mark.parametrize("norm_first", [True, False])
def test_torch_transformer_encoder(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    model = nn.Sequential(nn.Linear(8, 16), encoder, nn.Linear(16, 2)).eval()
    x = (torch.randn(2, 5, 8),)
    deep = autogrow.deepen(model, example_inputs=x)
    _assert_deeper_and_exact(model, deep, x)
    if norm_first:  # pre-norm layers are residual: one more layer, not a copy of the encoder
        assert len(deep) == 3 and len(deep[1].layers) == 4
        assert not deep[1].layers[3].linear2.weight.any()
    else:  # post-norm LN(x + f(x)) is not: identity layers after the encoder instead
        assert len(deep[1].layers) == 3 and isinstance(deep[3], nn.PReLU)
        with pytest.raises(autogrow.UnsupportedOpError, match="ModuleList"):
            autogrow.deepen(model, after="1.layers", example_inputs=x)


@pytest.mark.parametrize("after", ["1", "2", "3", "4"])
def test_new_layers_follow_the_models_eval_mode(after):
    """A model in eval mode gives a deepened model whose new BatchNorm is in eval mode too."""
    model, x = _cnn("relu").eval(), torch.randn(4, 3, 10, 10)
    deep = autogrow.deepen(model, after=after, example_inputs=(x,))
    assert not any(m.training for m in deep.modules())
    with torch.no_grad():  # no eval() call: the flags alone must give the same outputs
        assert torch.allclose(deep(x), model(x), atol=1e-5)
    model.train()
    deep = autogrow.deepen(model, after=after, example_inputs=(x,))
    assert all(m.training for m in deep.modules())


def test_wrapped_module_keeps_its_mode():
    model, x = FunctionalMLP("gelu").eval(), torch.randn(4, 5)
    deep = autogrow.deepen(model, after="fc1", example_inputs=(x,))
    assert not deep.fc1.training and not any(m.training for m in deep.fc1)
