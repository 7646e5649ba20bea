"""Non-integer widths through LayerNorm / RMSNorm: replicas plus filled units (mean or zero).

docs/widen.md ("Non-integer widths under LayerNorm and RMSNorm") has the construction.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from autogrow.graph.fill import fill_ratio
from autogrow.transforms.widen import widen_with_plan
from autogrow.verify import relative_error


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial norm affines (a unit weight and zero bias would hide a wrong scaling)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def _widen(model: nn.Module, factor, **kw) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", autogrow.GrowthWarning)  # every group grows as asked
        return autogrow.widen(model, factor, seed=0, **kw)


class ResidualLN(nn.Module):
    """inp -> h; two blocks h + fc2(gelu(fc1(LayerNorm(h)))); LayerNorm -> head."""

    def __init__(self, d: int = 8, norm: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": norm(d), "fc1": nn.Linear(d, 2 * d), "fc2": nn.Linear(2 * d, d)})
            for _ in range(2)
        )
        self.norm = norm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["fc2"](F.gelu(b["fc1"](b["norm"](h))))
        return self.head(self.norm(h))


def _exact(wide: nn.Module, model: nn.Module, *inputs) -> float:
    with torch.no_grad():
        return relative_error(wide(*inputs), model(*inputs))


@pytest.mark.parametrize("factor, width", [(1.5, 12), (2.5, 20), (1.25, 10)])
def test_layernorm_residual_grows_by_any_factor_exactly(factor, width):
    model = _randomize(ResidualLN())
    x = torch.randn(6, 5)
    graph = autogrow.analyze(model, (x,))
    assert graph.group("inp").uniform and graph.group("inp").fill == "mean"
    assert graph.max_factor("inp", factor) == width / 8
    wide = _widen(model, factor)
    assert wide.inp.out_features == width and wide.norm.normalized_shape == (width,)
    rho = (width // 8) * 8 / width
    assert math.isclose(wide.norm.eps, model.norm.eps * rho)
    assert math.isclose(wide.blocks[0]["norm"].eps, model.blocks[0]["norm"].eps * rho)
    assert _exact(wide, model, x) < 1e-5
    unverified = autogrow.widen(model, factor, seed=1, verify=False)  # exact by construction
    assert _exact(unverified, model, x) < 1e-5


def test_filled_units_hold_the_mean_and_normalise_to_zero():
    model = _randomize(ResidualLN())
    x = torch.randn(6, 5)
    grown = widen_with_plan(model, 1.5, seed=0)
    wide, m = grown.model, grown.plan.maps["inp"]
    assert m.filled is not None and int(m.filled.sum()) == 4 and m.filled[:8].sum() == 0
    with torch.no_grad():
        h = wide.inp(x)
        assert torch.allclose(h[:, 8:], h[:, :8].mean(1, keepdim=True).expand(-1, 4), atol=1e-6)
        normed = wide.norm(h)
        assert normed[:, 8:].abs().max() < 1e-6  # zero bias on filled units: readers see nothing
    rho = fill_ratio(8, 12)
    assert torch.allclose(wide.norm.weight[:8], model.norm.weight * rho**0.5)
    assert torch.equal(wide.norm.bias[:8], model.norm.bias)


def test_a_dict_width_that_is_no_multiple_fills():
    model = _randomize(ResidualLN())
    x = torch.randn(6, 5)
    wide = autogrow.widen(model, {"inp": 11}, seed=0)
    assert wide.inp.out_features == 11 and wide.blocks[1]["fc2"].out_features == 11
    assert _exact(wide, model, x) < 1e-5


@pytest.mark.parametrize("norm", [nn.RMSNorm, lambda d: nn.RMSNorm(d, eps=None)])
def test_rmsnorm_residual_is_zero_filled_and_exact(norm):
    model = _randomize(ResidualLN(norm=norm))
    x = torch.randn(6, 5)
    assert autogrow.analyze(model, (x,)).group("inp").fill == "zero"
    wide = _widen(model, 1.5)
    assert wide.inp.out_features == 12
    with torch.no_grad():
        assert wide.inp(x)[:, 8:].abs().max() == 0  # filled units: zero rows, zero bias
    old_eps = model.norm.eps if model.norm.eps is not None else torch.finfo(torch.float32).eps
    assert math.isclose(wide.norm.eps, old_eps * 8 / 12)
    assert _exact(wide, model, x) < 1e-5


class HandRMSNorm(nn.Module):
    """RMSNorm written out, as transformers models do: the eps literal is an attribute."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon)).to(x.dtype)


class PreNormBlock(nn.Module):
    """A pre-norm transformer block (ViT / Llama style) with multi-head attention."""

    def __init__(self, d: int, heads: int, norm: type[nn.Module]) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = norm(d), norm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, norm: type[nn.Module] = nn.LayerNorm, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 5, d))
        self.blocks = nn.Sequential(PreNormBlock(d, 2, norm), PreNormBlock(d, 2, norm))
        self.norm = norm(d)
        self.head = nn.Linear(d, 4)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


@pytest.mark.parametrize("norm, fill", [(nn.LayerNorm, "mean"), (HandRMSNorm, "zero")])
def test_pre_norm_transformer_residual_grows_by_one_and_a_half_exactly(norm, fill):
    model = _randomize(TinyViT(norm))
    img = torch.randn(2, 3, 8, 8)
    assert autogrow.analyze(model, (img,)).group("embed").fill == fill
    wide = _widen(model, 1.5, example_inputs=(img,))
    assert wide.embed.out_channels == 24 and wide.pos.shape == (1, 5, 24)
    assert wide.blocks[0].fc1.out_features == 96  # the MLP grows as well
    if norm is HandRMSNorm:
        assert math.isclose(wide.norm.variance_epsilon, 1e-6 * 16 / 24)
    assert _exact(wide, model, img) < 1e-5


def test_filled_units_learn_from_the_first_step():
    """Readers of a norm's output get copies of old columns for the filled units (their input
    is 0, so any value is exact): the filled units' norm bias and the writers' filled rows get
    gradients at once, and the units diverge from the mean in training."""
    model = _randomize(TinyViT())
    img = torch.randn(2, 3, 8, 8)
    wide = _widen(model, 1.5, example_inputs=(img,))
    wide.train()
    wide(img).square().sum().backward()
    assert wide.blocks[0].norm1.bias.grad[16:].abs().min() > 0
    assert wide.blocks[0].proj.weight.grad[16:].abs().sum(1).min() > 0
    assert wide.embed.weight.grad[16:].abs().flatten(1).sum(1).min() > 0
    torch.optim.SGD(wide.parameters(), lr=0.1).step()
    with torch.no_grad():  # after one step the filled rows are no longer the mean row
        h = wide.embed(img).flatten(2)
        assert (h[:, 16:] - h[:, :16].mean(1, keepdim=True)).abs().max() > 1e-3


def test_post_norm_stream_keeps_whole_multiples_and_says_why():
    """Post-norm (x = LN(x + f(x))): the stream is a norm's output, whose filled units are 0,
    not the mean that the next norm needs; filling cannot be exact, so x1.5 keeps it."""

    class PostNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.fc = nn.Linear(5, 8), nn.Linear(8, 8)
            self.ln1, self.ln2, self.head = nn.LayerNorm(8), nn.LayerNorm(8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(self.inp(x))
            return self.head(self.ln2(h + self.fc(h)))

    model = _randomize(PostNorm())
    graph = autogrow.analyze(model, (torch.randn(2, 5),))
    assert graph.group("inp").fill is None
    assert "mean-filled and zero-filled" in graph.unfilled[graph.group("inp").id]
    with pytest.raises(autogrow.ConstraintError, match="no filled units: a sum of mean-filled"):
        autogrow.widen(model, 1.5, seed=0)  # its only group: nothing else to widen


def test_optimizer_state_of_filled_units():
    """Filled entries start with zero first moments and the old units' mean second moment; the
    rescaled norm weight's moments follow its scale (gradients scale inversely)."""
    model = _randomize(ResidualLN())
    x = torch.randn(6, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x).square().sum().backward()
    opt.step()
    wide, opt2 = autogrow.widen(model, 1.5, seed=0, optimizer=opt)
    old, new = opt.state[model.inp.weight], opt2.state[wide.inp.weight]
    assert torch.equal(new["exp_avg"][:8], old["exp_avg"])
    assert new["exp_avg"][8:].abs().max() == 0
    mean_sq = old["exp_avg_sq"].mean(0, keepdim=True).expand(4, -1)
    assert torch.allclose(new["exp_avg_sq"][8:], mean_sq)
    rho = fill_ratio(8, 12)
    old_w, new_w = opt.state[model.norm.weight], opt2.state[wide.norm.weight]
    assert torch.allclose(new_w["exp_avg"][:8], old_w["exp_avg"] * rho**-0.5)
    assert torch.allclose(new_w["exp_avg_sq"][:8], old_w["exp_avg_sq"] * rho**-1)
    wide.train()
    wide(x).square().sum().backward()
    opt2.step()  # the grown state steps
    assert torch.isfinite(wide.inp.weight).all()


def test_sgd_momentum_of_a_mean_row_is_the_mean_velocity():
    model = _randomize(ResidualLN())
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    model(torch.randn(6, 5)).square().sum().backward()
    opt.step()
    wide, opt2 = autogrow.widen(model, 1.5, seed=0, optimizer=opt)
    old = opt.state[model.blocks[0]["fc2"].weight]["momentum_buffer"]
    new = opt2.state[wide.blocks[0]["fc2"].weight]["momentum_buffer"]
    # rows: the stream (mean rows keep moving as the mean); columns: fc2's input, the MLP
    # hidden group (replicated: shares), so compare row means over the old rows' columns
    assert torch.allclose(new[8:].sum(1), old.mean(0, keepdim=True).sum(1).expand(4), atol=1e-6)


def test_hf_llama_hidden_size_grows_by_one_and_a_half_and_round_trips(tmp_path):
    """rms_norm_eps follows the norms' eps, so from_pretrained rebuilds the same model. One
    attention head here; several grow with the hidden size by one common factor
    (tests/test_transformers.py, tests/test_stream_checkpoint.py)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = _randomize(transformers.LlamaForCausalLM(config))
    ids = torch.randint(0, 64, (2, 12))
    wide = autogrow.widen(model, 1.5, seed=0)
    assert wide.config.hidden_size == 48 and wide.model.norm.weight.shape == (48,)
    assert math.isclose(wide.config.rms_norm_eps, config.rms_norm_eps * 32 / 48)
    assert wide.model.layers[1].input_layernorm.variance_epsilon == wide.config.rms_norm_eps
    with torch.no_grad():
        expected = model(ids).logits
        assert relative_error(wide(ids).logits, expected) < 1e-5
    wide.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.rms_norm_eps == wide.config.rms_norm_eps
    with torch.no_grad():
        assert relative_error(reloaded(ids).logits, expected) < 1e-5


@pytest.mark.slow
def test_timm_vit_tiny_residual_grows_by_one_and_a_half():
    timm = pytest.importorskip("timm")
    model = _randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32))
    img = torch.randn(1, 3, 32, 32)
    wide = _widen(model, 1.5, example_inputs=(img,))
    assert wide.patch_embed.proj.out_channels == 288 and wide.norm.normalized_shape == (288,)
    assert math.isclose(wide.blocks[11].norm2.eps, model.blocks[11].norm2.eps * 192 / 288)
    assert _exact(wide, model, img) < 1e-4


@pytest.mark.slow
def test_timm_convnext_atto_streams_stay_whole_multiples_the_depthwise_conv_says_why():
    """A depthwise conv feeds each block's LayerNorm: a filled channel would have to hold the
    mean of the other channels' convolutions, which one channel's kernel cannot compute."""
    timm = pytest.importorskip("timm")
    model = _randomize(timm.create_model("convnext_atto", pretrained=False))
    img = torch.randn(1, 3, 64, 64)
    with pytest.warns(autogrow.GrowthWarning, match="no filled units: a grouped convolution"):
        wide = autogrow.widen(model, 1.5, example_inputs=(img,), seed=0)
    assert wide.stem[0].out_channels == 40  # kept
    assert wide.stages[0].blocks[0].mlp.fc1.weight.shape[0] == 240  # the MLPs grow
    assert _exact(wide, model, img) < 1e-4


class FunctionalLN(nn.Module):
    """F.layer_norm with the eps in an attribute of another name (timm's LayerNorm2d style)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.epsilon = 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.epsilon)


def test_functional_layer_norm_rescales_the_attribute_its_eps_comes_from():
    model = _randomize(ResidualLN(norm=FunctionalLN))
    x = torch.randn(6, 5)
    wide = _widen(model, 1.5)
    assert math.isclose(wide.norm.epsilon, 1e-5 * 8 / 12)
    assert _exact(wide, model, x) < 1e-5


class _Config:
    def __init__(self, norm_eps: float = 1e-6, initializer_range: float = 0.02) -> None:
        self.norm_eps, self.initializer_range = norm_eps, initializer_range


class _ConfigModel(nn.Module):
    """What grown_float_fields needs of a transformers model: a config it is built from."""

    def __init__(self, config: _Config) -> None:
        super().__init__()
        self.config = config
        self.a, self.b = nn.RMSNorm(4, eps=config.norm_eps), nn.RMSNorm(6, eps=config.norm_eps)


def test_config_eps_follows_the_norms_or_refuses_when_they_disagree():
    from autogrow.adapters.hf_floats import grown_float_fields

    model = _ConfigModel(_Config())
    assert grown_float_fields(model) == {}
    model.a.eps = model.b.eps = 1e-6 * 2 / 3
    assert grown_float_fields(model) == {"norm_eps": 1e-6 * 2 / 3}
    model.b.eps = 1e-6 * 0.7  # a second group grown by another ratio: one field cannot say it
    with pytest.raises(autogrow.ConstraintError, match="_Config.norm_eps sets the eps of several"):
        grown_float_fields(model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", [nn.LayerNorm, HandRMSNorm])
def test_filled_growth_passes_the_half_precision_tolerance(dtype, norm):
    model = _randomize(TinyViT(norm)).to(dtype)
    img = torch.randn(2, 3, 8, 8, dtype=dtype)
    wide = _widen(model, 1.5, example_inputs=(img,))  # verified at the dtype's tolerance
    assert wide.embed.out_channels == 24 and wide.norm.weight.dtype == dtype


def test_streams_grown_by_different_ratios_get_their_own_eps():
    """Two LayerNorm'd streams, 8 -> 12 (rho = 2/3) and 7 -> 10 (rho = 0.7): each norm's eps
    takes its own group's ratio."""

    class TwoStreams(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 8), nn.Linear(5, 7)
            self.ln_a, self.ln_b = nn.LayerNorm(8), nn.LayerNorm(7)
            self.head_a, self.head_b = nn.Linear(8, 3), nn.Linear(7, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head_a(self.ln_a(self.a(x))) + self.head_b(self.ln_b(self.b(x)))

    model = _randomize(TwoStreams())
    x = torch.randn(6, 5)
    wide = _widen(model, 1.5)
    assert (wide.a.out_features, wide.b.out_features) == (12, 10)
    assert math.isclose(wide.ln_a.eps, 1e-5 * 8 / 12) and math.isclose(wide.ln_b.eps, 1e-5 * 0.7)
    assert _exact(wide, model, x) < 1e-5


@pytest.mark.parametrize("symmetry", ["none", "paired"])
def test_filled_units_take_no_share_of_the_symmetry_noise(symmetry):
    """Paired noise is zero-sum over a unit's replicas; a filled unit is none of them."""
    model = _randomize(ResidualLN())
    x = torch.randn(6, 5)
    for factor in (1.5, 2.5):
        wide = autogrow.widen(model, factor, seed=0, symmetry=symmetry, verify=False)
        assert _exact(wide, model, x) < 1e-5
