"""Hugging Face transformers models built from small configs (no weights): widen and deepen
preserve the outputs, the config describes the grown model, save/load round-trips, tied
embeddings stay tied."""

from __future__ import annotations

import pytest
import torch

import autogrow
from autogrow.graph.fill import fill_ratio
from autogrow.testing import randomize_constant_tensors
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI

SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2)
VOCAB = 100


def _cfg(kind: str, **kw):
    return transformers.AutoConfig.for_model(kind, **kw)


def _decoder(kind: str):
    cfg = _cfg(kind, **SMALL, vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.AutoModelForCausalLM.from_config(cfg)


BUILDERS = {
    "bert": lambda: transformers.BertForMaskedLM(
        _cfg("bert", **SMALL, vocab_size=VOCAB, max_position_embeddings=64)
    ),
    "roberta": lambda: transformers.RobertaForMaskedLM(
        _cfg("roberta", **SMALL, vocab_size=VOCAB, max_position_embeddings=64)
    ),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        _cfg("gpt2", n_embd=64, n_head=4, n_layer=2, vocab_size=VOCAB, n_positions=64)
    ),
    "llama": lambda: _decoder("llama"),
    "qwen2": lambda: _decoder("qwen2"),
    "vit": lambda: transformers.ViTForImageClassification(
        _cfg("vit", **SMALL, image_size=32, patch_size=8, num_labels=5)
    ),
    "t5-encoder": lambda: transformers.T5EncoderModel(
        _cfg("t5", d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, vocab_size=VOCAB)
    ),
}
TIED = {"bert", "roberta", "gpt2", "t5-encoder"}


def _model(kind: str):
    torch.manual_seed(0)
    model = BUILDERS[kind]().eval()
    return randomize_constant_tensors(model)  # unit norm weights would hide a wrong scaling


def _inputs(kind: str, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return (torch.randn(2, 3, 32, 32, generator=g),)
    return (torch.randint(0, VOCAB, (2, 12), generator=g),)


def _out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_config_rebuilds(model) -> None:
    rebuilt = type(model)(model.config)
    assert _shapes(rebuilt) == _shapes(model)


def _assert_round_trip(model, kind, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    x = _inputs(kind, seed=1)
    assert relative_error(_out(loaded, x), _out(model, x)) == 0.0
    if kind in TIED:
        assert loaded.get_output_embeddings() is None or (
            loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
        )


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_widen_x2_preserves_outputs_and_config_describes_the_model(kind, tmp_path):
    model = _model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    big = autogrow.widen(model, 2.0, example_inputs=_inputs(kind), seed=0)
    x = _inputs(kind, seed=3)  # fresh inputs, not the ones widen verified on
    assert relative_error(_out(big, x), _out(model, x)) < 1e-4
    assert sum(p.numel() for p in big.parameters()) > 1.5 * sum(
        p.numel() for p in model.parameters()
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    old, new = model.config, big.config
    heads = "num_heads" if kind == "t5-encoder" else "n_head" if kind == "gpt2" else None
    heads = heads or "num_attention_heads"
    assert getattr(new, heads) == 2 * getattr(old, heads)
    if kind != "t5-encoder":  # its hidden state is the model output, which must not change
        hidden = "n_embd" if kind == "gpt2" else "hidden_size"
        assert getattr(new, hidden) == 2 * getattr(old, hidden)
    if kind in ("llama", "qwen2"):
        assert new.num_key_value_heads == 2 * old.num_key_value_heads
        head_size = [
            getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            for c in (old, new)
        ]
        assert head_size[0] == head_size[1]  # rotary embeddings: the head size stays
    if kind in TIED and big.get_output_embeddings() is not None:
        assert big.get_output_embeddings().weight is big.get_input_embeddings().weight
    _assert_config_rebuilds(big)
    _assert_round_trip(big, kind, tmp_path)


POST_LN = {"bert", "roberta"}  # LayerNorm(x + f(x)): a zeroed copy is the identity only
# while the LayerNorm is (weight 1, bias 0), as built from a config


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_deepen_adds_a_zeroed_layer_and_updates_the_layer_count(kind, tmp_path):
    model = _model(kind) if kind not in POST_LN else BUILDERS[kind]().eval()
    deep = autogrow.deepen(model, example_inputs=_inputs(kind))
    x = _inputs(kind, seed=3)
    assert relative_error(_out(deep, x), _out(model, x)) < 1e-4
    field = {"gpt2": "n_layer", "t5-encoder": "num_layers"}.get(kind, "num_hidden_layers")
    assert getattr(deep.config, field) == getattr(model.config, field) + 1
    assert getattr(model.config, field) == 2  # the original's config is untouched
    indices = [
        m.layer_idx
        for m in deep.modules()
        if type(getattr(m, "layer_idx", None)) is int and "Attention" in type(m).__name__
    ]
    if indices:  # one attention per layer: caches index layers by these
        assert sorted(set(indices)) == list(range(getattr(deep.config, field)))
    _assert_config_rebuilds(deep)
    _assert_round_trip(deep, kind, tmp_path)


def test_llama_widen_then_deepen_then_widen_chain():
    model = _model("llama")
    x = _inputs("llama")
    grown = autogrow.widen(model, 2.0, example_inputs=x, seed=1)
    grown = autogrow.deepen(grown, example_inputs=x, n=2)
    grown = autogrow.widen(grown, 2.0, example_inputs=x, seed=2)
    assert grown.config.hidden_size == 256 and grown.config.num_hidden_layers == 4
    assert relative_error(_out(grown, x), _out(model, x)) < 1e-4
    _assert_config_rebuilds(grown)


def test_non_integer_factor_grows_rms_normalised_widths_by_filled_units():
    # LlamaConfig validates hidden_size % heads == 0, so heads grow with the hidden size
    # (head_dim kept). The RMSNorm'd hidden size grows x1.5 by zero-filled units, every
    # RMSNorm's eps (the config's rms_norm_eps) times rho = 64 / 96; the FFN grows x1.5.
    model = _model("llama")
    x = _inputs("llama")
    big = autogrow.widen(model, 1.5, example_inputs=x, seed=0)
    old, new = model.config, big.config
    assert new.hidden_size == 96 and new.head_dim == old.head_dim
    assert (new.num_attention_heads, new.num_key_value_heads) == (6, 3)
    assert new.intermediate_size == 192
    assert new.rms_norm_eps == pytest.approx(old.rms_norm_eps * fill_ratio(64, 96), rel=1e-12)
    assert relative_error(_out(big, x), _out(model, x)) < 1e-4
    _assert_config_rebuilds(big)
    # BERT derives the head size from hidden / heads: heads stay with the hidden size.
    bert = _model("bert")
    big = autogrow.widen(bert, 1.5, example_inputs=_inputs("bert"), seed=0)
    assert (big.config.hidden_size, big.config.num_attention_heads) == (64, 4)
    assert big.config.intermediate_size == 192
    _assert_config_rebuilds(big)


def test_a_width_the_config_cannot_describe_is_a_clear_error():
    # GPT-2's FFN width is 4 * n_embd when n_inner is unset, so x1.5 on the FFNs alone has no
    # GPT2Config (widen(gpt2, 1.5) grows n_embd by filled units instead, and the FFNs follow);
    # the original model is left as it was.
    model = _model("gpt2")
    before = _shapes(model)
    ffns = {f"transformer.h.{i}.mlp.c_fc": 384 for i in range(2)}
    with pytest.raises(autogrow.ConstraintError, match="4 × n_embd"):
        autogrow.widen(model, ffns, example_inputs=_inputs("gpt2"), seed=0)
    assert _shapes(model) == before


def test_tied_embedding_division_moves_to_the_final_norm():
    model = _model("gpt2")
    graph = autogrow.analyze(model, _inputs("gpt2"))
    hidden = graph.group("transformer.wte")
    assert hidden.widenable and hidden.uniform
    big = autogrow.widen(model, 2.0, example_inputs=_inputs("gpt2"), seed=0)
    # Tied: the matrix is copied, never divided; the final norm's affine carries the shares.
    wte_old, wte_new = model.transformer.wte.weight, big.transformer.wte.weight
    assert torch.equal(wte_new[:, :64], wte_old)
    assert torch.allclose(
        big.transformer.ln_f.weight[:64] + big.transformer.ln_f.weight[64:],
        model.transformer.ln_f.weight,
    )


def test_inplace_failure_restores_config_and_modules():
    model = _model("gpt2")
    before = (_shapes(model), model.config.to_dict())
    ffns = {f"transformer.h.{i}.mlp.c_fc": 384 for i in range(2)}  # 4 × n_embd: no config
    with pytest.raises(autogrow.ConstraintError):
        autogrow.widen(model, ffns, example_inputs=_inputs("gpt2"), inplace=True)
    assert (_shapes(model), model.config.to_dict()) == before


@pytest.mark.parametrize("kind", sorted(POST_LN))
def test_deepen_refuses_post_layernorm_layers_with_trained_norms(kind):
    model = _model(kind)  # LayerNorm weights and biases redrawn, as after training
    with pytest.raises(autogrow.UnsupportedOpError, match="Post-LayerNorm") as refused:
        autogrow.deepen(model, example_inputs=_inputs(kind))
    # the refusal says what can be done instead
    assert "autogrow.widen(model" in str(refused.value)
    assert "autogrow.stack(model)" in str(refused.value)


def test_inplace_widen_keeps_tied_embeddings_tied():
    model = _model("gpt2")
    x = _inputs("gpt2")
    reference = _out(model, x)
    grown = autogrow.widen(model, 2.0, example_inputs=x, inplace=True, seed=0)
    assert grown is model and grown.config.n_embd == 128
    assert grown.lm_head.weight is grown.transformer.wte.weight
    assert relative_error(_out(grown, x), reference) < 1e-4
