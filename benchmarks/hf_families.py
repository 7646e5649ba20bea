"""Hugging Face families: widen ×2, ×1.5 and deepen, each checked by comparing outputs here.

Every family is a tiny config with random init (constant tensors redrawn, so a wrong scaling
shows). autogrow runs with ``verify=False``; this script compares the outputs itself, so a row
reads ``preserved`` (max relative error within tolerance), ``refused`` (autogrow raised) or
``wrong`` (autogrow returned a model whose outputs differ). A preserved row also checks that the
grown config rebuilds the grown shapes (``type(model)(model.config)`` on meta).

    python -m benchmarks.hf_families [family ...]

Measured (docs/transformers.md has the table): main a018025 → config12 cc25c7c, 28 families:
widen x2 preserved 17 → 27, widen x1.5 16 → 24, deepen 19 → 19, wrong 0 → 0. The families
the tests do not name run as slow tests (tests/test_hf_config_relations.py).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

TOLERANCE = 1e-4
VOCAB = 99


@dataclass(frozen=True)
class Family:
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Generator], tuple]


def _tokens(g: torch.Generator) -> tuple:
    return (torch.randint(0, VOCAB, (2, 10), generator=g),)


def _image(g: torch.Generator) -> tuple:
    return (torch.randn(2, 3, 32, 32, generator=g),)


def _audio(g: torch.Generator) -> tuple:
    return (torch.randn(2, 800, generator=g),)


def _mel(g: torch.Generator) -> tuple:
    return (torch.randn(2, 16, 40, generator=g),)


def _hf(model_class: str, config_class: str, **fields) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import transformers

        config = getattr(transformers, config_class)(**fields)
        return getattr(transformers, model_class)(config)

    return build


TEXT = dict(vocab_size=VOCAB, max_position_embeddings=64)
BERT = dict(TEXT, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
DECODER = dict(
    TEXT,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
)

FAMILIES: dict[str, Family] = {
    # the list
    "bert-base": Family(_hf("BertModel", "BertConfig", **BERT), _tokens),
    "opt": Family(
        _hf(
            "OPTForCausalLM",
            "OPTConfig",
            **TEXT,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=16,
        ),
        _tokens,
    ),
    "phi3": Family(_hf("Phi3ForCausalLM", "Phi3Config", **DECODER, pad_token_id=0), _tokens),
    "electra": Family(
        _hf("ElectraForMaskedLM", "ElectraConfig", **BERT, embedding_size=16), _tokens
    ),
    "falcon": Family(
        _hf(
            "FalconForCausalLM",
            "FalconConfig",
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        _tokens,
    ),
    "bloom": Family(
        _hf(
            "BloomForCausalLM", "BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4
        ),
        _tokens,
    ),
    "qwen2-moe": Family(
        _hf(
            "Qwen2MoeForCausalLM",
            "Qwen2MoeConfig",
            **DECODER,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
        ),
        _tokens,
    ),
    "mixtral": Family(
        _hf(
            "MixtralForCausalLM",
            "MixtralConfig",
            **dict(DECODER, intermediate_size=16),
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _tokens,
    ),
    "mamba": Family(
        _hf(
            "MambaForCausalLM",
            "MambaConfig",
            vocab_size=VOCAB,
            hidden_size=16,
            state_size=4,
            num_hidden_layers=2,
            expand=2,
            conv_kernel=4,
            time_step_rank=4,
            use_mambapy=True,
        ),
        _tokens,
    ),
    "convnext": Family(
        _hf(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            num_channels=3,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_stages=2,
            num_labels=5,
        ),
        _image,
    ),
    "whisper-encoder": Family(
        _hf(
            "WhisperForAudioClassification",  # the encoder with a classification head
            "WhisperConfig",
            vocab_size=VOCAB,
            num_mel_bins=16,
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=4,
            decoder_layers=1,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_source_positions=20,
            num_labels=3,
        ),
        _mel,
    ),
    "wav2vec2": Family(
        _hf(
            "Wav2Vec2Model",
            "Wav2Vec2Config",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 4),
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            do_stable_layer_norm=True,
        ),
        _audio,
    ),
    # more families
    "qwen2": Family(_hf("Qwen2ForCausalLM", "Qwen2Config", **DECODER), _tokens),
    "llama": Family(_hf("LlamaForCausalLM", "LlamaConfig", **DECODER), _tokens),
    "mistral": Family(_hf("MistralForCausalLM", "MistralConfig", **DECODER), _tokens),
    "gemma": Family(_hf("GemmaForCausalLM", "GemmaConfig", **DECODER, head_dim=8), _tokens),
    "qwen3": Family(_hf("Qwen3ForCausalLM", "Qwen3Config", **DECODER, head_dim=8), _tokens),
    "granite": Family(_hf("GraniteForCausalLM", "GraniteConfig", **DECODER), _tokens),
    "stablelm": Family(_hf("StableLmForCausalLM", "StableLmConfig", **DECODER), _tokens),
    "gpt-neox": Family(_hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **BERT, rotary_pct=0.5), _tokens),
    "gptj": Family(
        _hf(
            "GPTJForCausalLM",
            "GPTJConfig",
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            rotary_dim=4,
        ),
        _tokens,
    ),
    "gpt2": Family(
        _hf(
            "GPT2LMHeadModel",
            "GPT2Config",
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
        ),
        _tokens,
    ),
    "t5-encoder": Family(
        _hf(
            "T5EncoderModel",
            "T5Config",
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
        ),
        _tokens,
    ),
    "roberta": Family(_hf("RobertaForMaskedLM", "RobertaConfig", **BERT), _tokens),
    "distilbert": Family(
        _hf(
            "DistilBertForMaskedLM",
            "DistilBertConfig",
            **TEXT,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
        ),
        _tokens,
    ),
    "vit": Family(
        _hf(
            "ViTForImageClassification",
            "ViTConfig",
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=5,
        ),
        _image,
    ),
    "deit": Family(
        _hf(
            "DeiTForImageClassification",
            "DeiTConfig",
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=5,
        ),
        _image,
    ),
    "resnet": Family(
        _hf(
            "ResNetForImageClassification",
            "ResNetConfig",
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            layer_type="basic",
            num_labels=5,
        ),
        _image,
    ),
    "swin": Family(
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=4,
            num_labels=5,
        ),
        _image,
    ),
}


def output(model: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        out = model(*inputs)
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out[0]


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """The family's model, random init, constant tensors redrawn, in eval mode."""
    from autogrow.testing import randomize_constant_tensors

    torch.manual_seed(seed)
    return randomize_constant_tensors(FAMILIES[name].build().eval())


def inputs(name: str, seed: int = 0) -> tuple:
    return FAMILIES[name].inputs(torch.Generator().manual_seed(seed))


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def config_changes(old: object, new: object) -> str:
    """The config's fields that differ, as ``field a→b`` (plain ``to_dict`` values, so that
    this runs against any autogrow version)."""
    before, after = old.to_dict(), new.to_dict()
    return ", ".join(
        f"{k} {v}→{after.get(k)}"
        for k, v in before.items()
        if after.get(k) != v and not k.startswith("_") and k != "transformers_version"
    )


def _reason(message: str) -> str:
    """One line of a refusal: the part that names a config field when there is one (a list
    of groups and reasons is split at "; ")."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    parts = [p for p in first.split("; ") if "config field" in p]
    return (parts[0].split(": ", 1)[-1] if parts else first)[:180].replace("|", "/")


def run(name: str, op: str) -> dict[str, object]:
    import autogrow
    from autogrow.verify import relative_error

    model = tiny(name)
    x = inputs(name)
    before = sum(p.numel() for p in model.parameters())
    row: dict[str, object] = {"family": name, "op": op, "before": before}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if op == "deepen":
                grown = autogrow.deepen(model, example_inputs=x, verify=False)
            else:
                factor = float(op.removeprefix("widen x"))
                grown = autogrow.widen(model, factor, example_inputs=x, seed=0, verify=False)
    except autogrow.AutogrowError as e:
        row.update(outcome="refused", why=f"{type(e).__name__}: {_reason(str(e))}")
        return row
    row["seconds"] = time.perf_counter() - start
    fresh = inputs(name, seed=1)
    error = relative_error(output(grown, fresh), output(model, fresh))
    with torch.device("meta"):
        rebuilt = type(grown)(grown.config)
    rebuilds = _shapes(rebuilt) == _shapes(grown)
    row.update(
        outcome="preserved" if error <= TOLERANCE else "wrong",
        error=error,
        after=sum(p.numel() for p in grown.parameters()),
        why="" if rebuilds else "config does not rebuild the grown shapes",
        config=config_changes(model.config, grown.config),
    )
    if not rebuilds:
        row["outcome"] = "wrong"
    return row


OPS = ("widen x2", "widen x1.5", "deepen")


def main(names: list[str]) -> None:
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    print("| family | op | outcome | max rel error | params before → after | config / reason |")
    print("|---|---|---|---|---|---|")
    for name in names or list(FAMILIES):
        for op in OPS:
            r = run(name, op)
            error = f"{r['error']:.1e}" if "error" in r else ""
            params = f"{r['before']} → {r['after']}" if "after" in r else f"{r['before']}"
            note = r.get("why") or r.get("config", "")
            print(f"| {name} | {op} | {r['outcome']} | {error} | {params} | {note} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
