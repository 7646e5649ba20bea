"""widen ×2 on timm models whose forward code holds integers derived from widths (issue 12).

Prints one row per model: exact (verified), or the error widen raised. Random init, a
1×3×64×64 input where the model accepts it, else its default input size.

    python -m benchmarks.timm_literals [name ...]

Measured (timm 1.0.31, random init), before probing (5a3d4bb) → after:

    cspresnet50, skresnet18, mambaout_femto, inception_next_atto: HardcodedSizeError → exact
    levit_128s: HardcodedSizeError → exact
    ghostnet_100, ghostnetv2_100, coatnet_nano_rw_224, tiny_vit_5m_224:
        VerificationError (the grown model failed to run) → exact
    efficientformerv2_s0: VerificationError → HardcodedSizeError (num_heads sizes the q and
        the v heads, which fall in different groups)
    mobilevitv2_050: VerificationError → HardcodedSizeError (split([1, ...]): the one-channel
        query is a literal)
    xcit_nano_12_p16_224: VerificationError → exact (fx traces it since main's F.normalize
        rule; num_heads found by value and confirmed by the checking trace)
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

MODELS = [
    "cspresnet50",
    "skresnet18",
    "ghostnet_100",
    "ghostnetv2_100",
    "levit_128s",
    "xcit_nano_12_p16_224",
    "mobilevitv2_050",
    "tiny_vit_5m_224",
    "efficientformerv2_s0",
    "coatnet_nano_rw_224",
    "mambaout_femto",
    "inception_next_atto",
]


def example_input(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(1, 3, 64, 64)
    try:
        with torch.no_grad():
            model(x)
        return x
    except Exception:  # noqa: BLE001 - a model with a fixed input size
        return torch.randn(1, *model.pretrained_cfg["input_size"])


def outcome(name: str) -> tuple[str, float]:
    import timm

    import autogrow

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = example_input(model)
    start = time.perf_counter()
    try:
        autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
        result = "exact"
    except Exception as e:  # noqa: BLE001 - the row reports it
        result = f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"
    return result, time.perf_counter() - start


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the GrowthWarnings of partial growth
    for name in names or MODELS:
        result, seconds = outcome(name)
        print(f"| {name} | {result} | {seconds:.1f} s |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
