"""Non-integer widths under LayerNorm / RMSNorm: which residual streams grow at x1.5, and how
exactly (max relative error, float32). ``python -m benchmarks.norm_fill`` from the repository
root in the dev venv (timm and transformers installed); about a minute on 2 cores.
"""

from __future__ import annotations

import time
import warnings

import torch

import autogrow
from autogrow.verify import relative_error


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _models():
    import timm
    import transformers

    def llama(heads: int, kv: int):
        config = transformers.LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=kv,
        )
        return transformers.LlamaForCausalLM(config), (torch.randint(0, 128, (2, 16)),)

    img = (torch.randn(1, 3, 224, 224),)
    yield "timm vit_tiny_patch16_224", timm.create_model("vit_tiny_patch16_224"), img
    yield "timm deit_tiny_patch16_224", timm.create_model("deit_tiny_patch16_224"), img
    yield "timm convnext_atto", timm.create_model("convnext_atto"), (torch.randn(1, 3, 64, 64),)
    yield "HF Llama (1 head)", *llama(1, 1)
    yield "HF Llama (4 heads, 2 kv)", *llama(4, 2)


def main() -> None:
    torch.set_num_threads(2)
    print(f"{'model':28} {'stream':>12} {'fill':>5} {'max rel err':>11} {'s':>5}  kept because")
    for name, model, inputs in _models():
        model = _randomize(model)
        graph = autogrow.analyze(model, inputs)
        stream = max((g for g in graph.groups if g.uniform), key=lambda g: len(g.members))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", autogrow.GrowthWarning)
            grown = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0, verify=False)
        seconds = time.perf_counter() - start
        new = autogrow.analyze(grown, inputs).group(stream.name).width
        with torch.no_grad():
            a, b = grown(*inputs), model(*inputs)
            a, b = (getattr(a, "logits", a), getattr(b, "logits", b))
            err = relative_error(a, b)
        why = "" if new != stream.width else graph.unfilled.get(stream.id, "ratio-tied")[:60]
        width = f"{stream.width}->{new}"
        print(f"{name:28} {width:>12} {stream.fill or '-':>5} {err:11.2e} {seconds:5.1f}  {why}")


if __name__ == "__main__":
    main()
