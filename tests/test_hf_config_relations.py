"""Hugging Face configs solved exactly before widths are chosen (issue 12, section 2): the
config's fields, probed on meta builds, become relations on the width groups, widen plans under
them, and the grown config is written from them. So a widened model is exact, its config builds
its shapes, and save_pretrained / from_pretrained round-trips it; or widen refuses with a
ConstraintError naming the config field and the group it blocks.

Tiny configs, random init (``benchmarks/hf_families.py`` builds them). What grows is asserted
as it is today and why: at x1.5 a residual width under RMSNorm grows by filled units (zero
units, the config's ``rms_norm_eps`` rescaled), with the heads that config ties to it; under a
LayerNorm whose eps no config field sets, or where something else stops filling, it grows by
whole multiples only, so there only FFNs grow.
"""

from __future__ import annotations

import pytest
import torch

import autogrow
from autogrow.graph.fill import fill_ratio
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI

from benchmarks.hf_families import inputs, output, tiny  # noqa: E402 - needs transformers

# (family, factor) -> (fields that grow by the factor, fields that keep their value, why).
GROWS = {
    ("bert-base", 2.0): (
        ["intermediate_size"],
        ["hidden_size", "num_attention_heads"],
        "a base model's output is its hidden state, so hidden stays; head size = hidden / heads "
        "then keeps the heads",
    ),
    ("bert-base", 1.5): (["intermediate_size"], ["hidden_size", "num_attention_heads"], ""),
    ("opt", 2.0): (["hidden_size", "ffn_dim", "num_attention_heads"], [], ""),
    ("opt", 1.5): (
        ["ffn_dim"],
        ["hidden_size", "num_attention_heads"],
        "LayerNorm eps is hard-coded (no config field): hidden grows by whole multiples only",
    ),
    ("phi3", 2.0): (
        ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"],
        [],
        "fused qkv_proj: the key/value count shows in no shape alone, it is matched at attention",
    ),
    ("phi3", 1.5): (
        ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"],
        [],
        "RMSNorm: hidden grows by zero-filled units, heads follow hidden / head_dim",
    ),
    ("electra", 2.0): (
        ["hidden_size", "num_attention_heads", "intermediate_size"],
        ["embedding_size"],
        "the factorised embedding stays at its own width",
    ),
    ("electra", 1.5): (["intermediate_size"], ["hidden_size"], "LayerNorm"),
    ("qwen2", 2.0): (
        ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"],
        [],
        "",
    ),
    ("qwen2", 1.5): (
        ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"],
        [],
        "RMSNorm: hidden grows by zero-filled units, heads follow hidden / head_dim",
    ),
    ("qwen3", 1.5): (
        ["intermediate_size", "num_attention_heads", "num_key_value_heads"],
        ["hidden_size", "rms_norm_eps"],
        "rms_norm_eps also sets q_norm/k_norm over head_dim, whose eps must stay: no fill",
    ),
    ("falcon", 2.0): (
        ["hidden_size", "num_attention_heads", "ffn_hidden_size"],
        [],
        "the fused query_key_value is split by index ops whose positions are constants "
        "(a slice), and the single key/value head broadcasts to every query head",
    ),
    ("falcon", 1.5): (
        ["hidden_size", "num_attention_heads", "ffn_hidden_size"],
        [],
        "LayerNorm with layer_norm_epsilon: filled units through FalconLinear's x @ weight.T",
    ),
    ("gpt2", 1.5): (
        ["n_embd", "n_head"],
        [],
        "LayerNorm with layer_norm_epsilon: filled units through Conv1D's addmm, the FFN "
        "follows as 4 × n_embd",
    ),
    ("convnext", 2.0): (["hidden_sizes[0]", "hidden_sizes[1]"], [], "one field per stage"),
    ("resnet", 2.0): (
        ["embedding_size", "hidden_sizes[0]", "hidden_sizes[1]"],
        [],
        "embedding_size and hidden_sizes[0] change together (one alone adds a shortcut)",
    ),
    ("swin", 2.0): (["embed_dim", "num_heads[0]", "num_heads[1]"], [], "per-stage head counts"),
    ("swin", 1.5): (["mlp_ratio"], ["embed_dim"], "a float ratio: the FFN is embed_dim × ratio"),
    ("whisper-encoder", 2.0): (
        ["d_model", "encoder_attention_heads", "encoder_ffn_dim"],
        ["decoder_ffn_dim"],
        "the decoder fields size nothing of the encoder model",
    ),
    ("whisper-encoder", 1.5): (["encoder_ffn_dim"], ["d_model"], "LayerNorm"),
    ("wav2vec2", 2.0): (
        ["intermediate_size"],
        ["hidden_size"],
        "a base model's output is its hidden state (and masked_spec_embed, a training-only "
        "tensor no traced op reads, is sized by hidden_size); the positional conv's weight "
        "norm has a rule now (tests/test_hf_ops.py grows Wav2Vec2ForCTC's hidden)",
    ),
    ("wav2vec2", 1.5): (["intermediate_size"], ["hidden_size"], ""),
    ("mamba", 2.0): (
        ["hidden_size", "intermediate_size", "time_step_rank"],
        ["state_size", "conv_kernel"],
        "the selective scan's zero initial state takes the inner width; the state stays",
    ),
    ("mamba", 1.5): (
        ["hidden_size", "intermediate_size", "time_step_rank"],
        ["state_size"],
        "RMSNorm: hidden grows by zero-filled units (layer_norm_epsilon rescaled)",
    ),
}
SLOW = {"whisper-encoder", "convnext", "resnet", "swin", "mamba", "falcon"}


def _field(config, name: str):
    if name.endswith("]"):
        field, index = name[:-1].split("[")
        return getattr(config, field)[int(index)]
    return getattr(config, name)


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _grown_and_checked(name: str, factor: float, tmp_path):
    model = tiny(name)
    grown = autogrow.widen(model, factor, example_inputs=inputs(name), seed=0)  # verify on
    x = inputs(name, seed=3)  # fresh inputs, not the ones widen verified on
    assert relative_error(output(grown, x), output(model, x)) < 1e-4
    with torch.device("meta"):
        rebuilt = type(grown)(grown.config)
    assert _shapes(rebuilt) == _shapes(grown)
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path).eval()
    assert relative_error(output(loaded, x), output(grown, x)) == 0.0
    return model, grown


@pytest.mark.filterwarnings("ignore::autogrow.GrowthWarning")  # partial growth is expected
@pytest.mark.parametrize(
    "name, factor",
    [
        pytest.param(*key, marks=[pytest.mark.slow] if key[0] in SLOW else [])
        for key in sorted(GROWS)
    ],
)
def test_widen_is_exact_and_the_config_states_the_growth(name, factor, tmp_path):
    model, grown = _grown_and_checked(name, factor, tmp_path)
    grows, keeps, _why = GROWS[(name, factor)]
    for field in grows:
        old = _field(model.config, field)
        assert _field(grown.config, field) == int(old * factor), field
    for field in keeps:
        assert _field(grown.config, field) == _field(model.config, field), field
    old_eps = getattr(model.config, "rms_norm_eps", None)
    if old_eps is not None:  # zero-filled units rescale every RMSNorm's eps by one ρ
        hidden = model.config.hidden_size, grown.config.hidden_size
        assert grown.config.rms_norm_eps == pytest.approx(old_eps * fill_ratio(*hidden), rel=1e-12)
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("factor", [2.0, 1.5])
def test_bloom_is_refused_naming_the_field_that_cannot_follow(factor):
    # The heads meet a fixed axis (ALiBi's per-head bias), and head size = hidden / heads: so
    # hidden_size cannot grow, and the FFN is 4 × hidden_size. Nothing the config can state.
    model = tiny("bloom")
    with pytest.raises(autogrow.ConstraintError, match="hidden_size") as e:
        autogrow.widen(model, factor, example_inputs=inputs("bloom"), seed=0)
    assert "4 × hidden_size" in str(e.value) or "is held" in str(e.value)
    if factor == 2.0:  # the reasons name both halves of hidden = heads × head size
        assert "a tensor computed in forward (not a parameter) is added" in str(e.value)
        assert "never the query·key size" in str(e.value)


@pytest.mark.slow
def test_convnext_x1_5_is_refused_because_the_ffn_is_four_times_the_stage_width():
    model = tiny("convnext")
    with pytest.raises(autogrow.ConstraintError, match=r"4 × hidden_sizes\[0\]"):
        autogrow.widen(model, 1.5, example_inputs=inputs("convnext"), seed=0)


def test_a_requested_group_the_config_cannot_state_names_the_field_and_the_group():
    model = tiny("bert-base")
    x = inputs("bert-base")
    # The heads of one layer: head size = hidden_size / heads, and hidden is the frozen output.
    with pytest.raises(autogrow.ConstraintError) as e:
        autogrow.widen(model, {"encoder.layer.0.attention.self.query": 64}, example_inputs=x)
    text = str(e.value)
    assert "'encoder.layer.0.attention.self.query' cannot grow 4 -> 8" in text
    assert "hidden_size" in text and "frozen: model output" in text
    # One layer's FFN: intermediate_size is one field for every layer.
    with pytest.raises(autogrow.ConstraintError, match="intermediate_size") as e:
        autogrow.widen(model, {"encoder.layer.0.intermediate.dense": 128}, example_inputs=x)
    assert "encoder.layer.1.intermediate.dense" in str(e.value)
    both = {f"encoder.layer.{i}.intermediate.dense": 128 for i in range(2)}
    grown = autogrow.widen(model, both, example_inputs=x, seed=0)
    assert grown.config.intermediate_size == 128


def test_relations_are_the_configs_own_sizes():
    from autogrow.adapters.hf_config import relations_for

    model = tiny("qwen2")
    graph = autogrow.analyze(model, inputs("qwen2"))
    relations = relations_for(model, graph.analysis)
    sized = {str(m) for ms in relations.widths_of.values() for m in ms}
    assert {"hidden_size", "intermediate_size"} <= sized
    assert "num_attention_heads / 2" in sized  # query heads = kv heads × 2 at attention
    assert relations.values["hidden_size"] == model.config.hidden_size


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["llama", "gpt-neox", "t5-encoder", "distilbert", "swin", "resnet"]
)
def test_benchmark_families_are_never_wrong(name):
    # benchmarks/hf_families.py on families the tests above do not name: widen x2, x1.5 and
    # deepen with verify=False, outputs compared by the benchmark; a refusal is allowed, a
    # returned model that computes something else (or that its config would not rebuild) is not.
    from benchmarks.hf_families import OPS, run

    rows = [run(name, op) for op in OPS]
    assert all(r["outcome"] != "wrong" for r in rows), rows
    assert rows[0]["outcome"] == "preserved" and rows[0]["after"] > rows[0]["before"], rows[0]
