"""Partial growth is reported: a float factor that some groups cannot take warns once with a
GrowthWarning naming them, their width and why; WidthGraph answers the largest factor each
group admits; refusals advise what fits the call (issue 10, point 6)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import autogrow
from autogrow.verify import relative_error


class ResidualMLP(nn.Module):
    """x -> inp -> h; h + fc2(relu(fc1(LayerNorm(h)))) -> tanh -> out: the residual stream is
    uniform, and the tanh on it keeps filled units (which let a LayerNorm'd stream grow by any
    factor, tests/test_norm_fill.py) out: it grows by whole multiples only."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.ln = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.fc2(torch.relu(self.fc1(self.ln(h))))
        return self.out(torch.tanh(h))


class Normalized(nn.Module):
    """torch.special.erfc has no rule: the features it sees are frozen, the hidden layer grows.
    (F.normalize, used here first, has a rule now.)"""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.special.erfc(self.a(x)))))


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # LayerNorm's unit affine would hide a wrong scaling
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _widen_recording(model: nn.Module, factor, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wide = autogrow.widen(model, factor, seed=0, **kw)
    return wide, [w for w in caught if issubclass(w.category, autogrow.GrowthWarning)]


def test_growth_warning_is_a_public_user_warning():
    assert issubclass(autogrow.GrowthWarning, UserWarning)
    assert not issubclass(autogrow.GrowthWarning, autogrow.AutogrowError)
    assert "GrowthWarning" in autogrow.__all__


def test_float_factor_lists_the_layernorm_group_it_kept_and_stays_exact():
    model = _model(ResidualMLP)
    x = torch.randn(5, 4)
    with pytest.warns(autogrow.GrowthWarning, match=r"inp: width 16 kept \(x1\.5 asks 24\)"):
        wide = autogrow.widen(model, 1.5, seed=0)
    assert wide.inp.out_features == 16 and wide.fc1.out_features == 48  # MLP grew, stream kept
    with torch.no_grad():
        assert relative_error(wide(x), model(x)) < 1e-5


def test_warning_says_why_and_what_to_do_once_per_call_at_the_callers_line():
    model = _model(ResidualMLP)
    _, caught = _widen_recording(model, 1.5)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("widen with factor 1.5 grew 1 of 2 widenable groups")
    assert "uniform (op 'layer_norm' in module 'ln')" in text
    assert "no filled units: tanh of filled units" in text
    assert "whole multiples" in text and "integer factor (2.0)" in text
    assert "fc1" not in text  # it grew as asked
    assert caught[0].filename == __file__  # attributed to the caller, not to autogrow
    _, again = _widen_recording(model, 1.5)
    assert len(again) == 1


def test_factors_every_group_takes_do_not_warn():
    model = _model(ResidualMLP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", autogrow.GrowthWarning)
        wide = autogrow.widen(model, 2.0, seed=0)
        autogrow.widen(model, 3, seed=0)
        autogrow.widen(model, {"fc1": 1.5}, seed=0)  # a dict names its groups itself
    assert wide.inp.out_features == 32


def test_factor_above_an_integer_reports_groups_grown_less():
    _, caught = _widen_recording(_model(ResidualMLP), 2.5)
    assert len(caught) == 1
    assert "inp: width 16 grown to 32 (x2.5 asks 40)" in str(caught[0].message)


def test_groups_frozen_by_an_op_without_a_rule_get_a_line_with_the_op():
    model = _model(Normalized)
    wide, caught = _widen_recording(model, 2.0)
    assert wide.b.out_features == 32 and wide.a.out_features == 8
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "b:in (8) frozen" in text and "erfc" in text and "register_rule" in text
    assert "integer factor" not in text  # 2.0 is one


def test_max_factor_of_a_uniform_group_is_a_whole_number():
    graph = autogrow.analyze(_model(ResidualMLP))
    stream = graph.group("inp")
    assert stream.uniform
    assert graph.max_factor(stream, 1.5) == 1.0
    assert graph.max_factor("inp", 2.5) == 2.0
    assert graph.max_factor("inp", 3) == 3.0
    assert graph.max_factor("fc1", 1.5) == 1.5
    assert graph.max_factor("out", 4.0) == 1.0  # frozen: the model output
    assert graph.admissible_factors(1.5) == {"inp": 1.0, "fc1": 1.5}
    with pytest.raises(KeyError):
        graph.max_factor("nope", 2.0)


def test_max_factor_of_groups_normalised_together_is_their_common_whole_factor():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p, self.q = nn.Linear(4, 6), nn.Linear(4, 10)
            self.ln, self.out = nn.LayerNorm(16), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.ln(torch.cat([self.p(x), self.q(x)], dim=-1)))

    graph = autogrow.analyze(Cat())
    p, q = graph.group("p"), graph.group("q")
    assert [g.name for g in graph.ratio_tied(p)] == ["q"]
    assert graph.max_factor(p, 2.7) == graph.max_factor(q, 2.7) == 2.0


def test_nothing_to_widen_advice_fits_the_factor():
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(autogrow.ConstraintError, match=r"integer factor \(2\.0\)") as e:
        autogrow.widen(net, 1.5)
    assert "0 (width 8): uniform" in str(e.value)
    with pytest.raises(autogrow.ConstraintError) as e:
        autogrow.widen(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), 1.01)
    assert "gains a unit" in str(e.value) and "integer" not in str(e.value)


def test_timm_edgenext_lists_the_kept_normalised_stages_and_what_keeps_the_heads():
    timm = pytest.importorskip("timm")  # in the dev extra: always present in CI
    torch.manual_seed(0)
    model = timm.create_model("edgenext_xx_small", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    _, caught = _widen_recording(model, 1.5, example_inputs=(x,))
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("widen with factor 1.5 grew 12 of 18 widenable groups")
    for name, width in [
        ("stem.0", 24),
        ("stages.1.downsample.1", 24),
        ("stages.3.downsample.1", 42),
    ]:
        assert f"{name}: width {width} kept" in text
    assert text.count("uniform (op 'layer_norm'") == 3
    # x2: every stream grows; one attention's heads stay, held by a reshape that sizes them
    # from a stream cut by uneven chunks (frozen: chunk sizes are ceil(size / n)).
    wide, caught = _widen_recording(model, 2.0, example_inputs=(x,))
    text = str(caught[0].message)
    assert text.startswith("widen with factor 2.0 grew 17 of 18 widenable groups")
    assert "stages.2.blocks.5.xca.qkv: width 4 kept (x2 asks 8): forward code keeps" in text
    assert "edgenext.py:175" in text and "integer factor" not in text
    with torch.no_grad():
        assert relative_error(wide(x), model(x)) < 1e-4


def _gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(
        "gpt2", n_embd=64, n_head=4, n_layer=2, vocab_size=100, n_positions=64
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval(), (torch.randint(0, 100, (2, 12)),)


def test_config_advice_names_an_integer_factor_only_for_a_fraction():
    model, x = _gpt2()
    # One layer's FFN x2: every axis grows by a whole factor, but n_embd sizes the FFN too.
    with pytest.raises(autogrow.ConstraintError, match="n_embd") as e:
        autogrow.widen(model, {"transformer.h.0.mlp.c_fc": 2.0}, example_inputs=x)
    assert "integer factor" not in str(e.value) and "whole factor" in str(e.value)


@pytest.mark.slow
def test_config_advice_names_an_integer_factor_for_a_fraction_that_plans_nothing():
    pytest.importorskip("transformers")
    from benchmarks.hf_families import inputs, tiny

    # x1.5: ConvNeXt's FFN (4 × hidden_sizes[i]) cannot grow while the stage width stays
    # (a depthwise convolution feeds its LayerNorm: no filled units), so nothing is planned,
    # and the refusal names the relation. (GPT-2 x1.5 grows n_embd by filled units now.)
    with pytest.raises(autogrow.ConstraintError, match="Use an integer factor") as e:
        autogrow.widen(tiny("convnext"), 1.5, example_inputs=inputs("convnext"))
    assert "its width is 4 × hidden_sizes[1]" in str(e.value)


def test_loading_a_partially_grown_checkpoint_does_not_warn_again(tmp_path):
    model = _model(ResidualMLP)
    with pytest.warns(autogrow.GrowthWarning):
        wide = autogrow.widen(model, 1.5, seed=0)
    autogrow.save(wide, tmp_path / "ckpt", factory=ResidualMLP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", autogrow.GrowthWarning)
        autogrow.save(wide, tmp_path / "again", factory=ResidualMLP)  # check=True replays
        loaded = autogrow.load(tmp_path / "ckpt", trust=True)
    assert loaded.fc1.out_features == 48


def test_heads_ratio_tied_to_a_normalised_hidden_size_are_listed_with_the_tie():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(
        "bert", hidden_size=64, num_attention_heads=4, intermediate_size=128,
        num_hidden_layers=1, vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(cfg).eval()
    x = (torch.randint(0, 100, (2, 12)),)
    graph = autogrow.analyze(model, x)
    heads = "bert.encoder.layer.0.attention.self.query"
    assert graph.max_factor(heads, 1.5) == 1.0 and graph.max_factor(heads, 2.0) == 2.0
    assert graph.max_factor("bert.encoder.layer.0.intermediate.dense", 1.5) == 1.5
    _, caught = _widen_recording(model, 1.5, example_inputs=x)
    text = str(caught[0].message)
    assert f"{heads}: width 4 kept (x1.5 asks 6): ratio-tied (BertConfig head size" in text
