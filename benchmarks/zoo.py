"""Widen every torchvision classification model and print a table.

    python -m benchmarks.zoo                 # the whole list, factor 1.5, 224x224 input
    python -m benchmarks.zoo resnet18 vit_b_16 --factor 2.0 --size 160

Columns: model, parameters before/after, max relative error of the outputs (eval mode),
seconds for widen (verification included), and the outcome (ok, or the error class and message).
Constant parameters of the random init (zero heads, unit norm weights, 1e-6 layer scales) are
redrawn first (autogrow.testing.randomize_constant_tensors) so that every layer reaches the output.
A model that cannot be widened must raise an AutogrowError; anything else is a bug.
"""

from __future__ import annotations

import argparse
import gc
import time
import warnings

import torch
import torchvision

import autogrow
from autogrow.testing import randomize_constant_tensors
from autogrow.verify import compare, run


def _input_size(name: str, size: int) -> int:
    if name.startswith("vit_h_14") and size < 224:
        return 224  # patch embedding asserts the configured image size
    if name.startswith(("vit_", "swin", "maxvit")):
        return 224
    return max(size, 75) if name.startswith("inception") else size


def widen_one(name: str, factor: float, size: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = randomize_constant_tensors(torchvision.models.get_model(name).eval(), seed)
    x = torch.randn(1, 3, _input_size(name, size), _input_size(name, size))
    before = sum(p.numel() for p in model.parameters())
    row = {"model": name, "params": before, "params_after": None, "error": None}
    t = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:  # a partial growth: one column
            warnings.simplefilter("always", autogrow.GrowthWarning)
            wide = autogrow.widen(model, factor, example_inputs=(x,), seed=seed)
    except autogrow.AutogrowError as e:
        row.update(seconds=time.perf_counter() - t, outcome=f"{type(e).__name__}: {e}"[:160])
        return row
    except Exception as e:  # noqa: BLE001 - reported as a bug in the table
        row.update(seconds=time.perf_counter() - t, outcome=f"BUG {type(e).__name__}: {e}"[:160])
        return row
    row["seconds"] = time.perf_counter() - t
    row["params_after"] = sum(p.numel() for p in wide.parameters())
    row["error"] = compare(run(wide, (x,)), run(model, (x,))).max_error
    larger = row["params_after"] > before
    row["outcome"] = "ok" if larger and row["error"] <= 1e-4 else "BUG: not larger or not exact"
    kept = sum(1 for w in caught if issubclass(w.category, autogrow.GrowthWarning))
    if kept and row["outcome"] == "ok":
        row["outcome"] = "ok (GrowthWarning: some groups kept their width)"
    del wide, model
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "models", nargs="*", help="model names (default: every classification model)"
    )
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--size", type=int, default=224, help="input height/width for CNNs")
    parser.add_argument("--skip", nargs="*", default=[], help="model names to leave out")
    args = parser.parse_args()
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    names = [n for n in names if n not in args.skip]
    header = (
        f"{'model':<24} {'params':>12} {'after':>12} {'max rel err':>11} {'seconds':>8}  outcome"
    )
    print(header)
    print("-" * len(header))
    ok = 0
    for name in names:
        r = widen_one(name, args.factor, args.size)
        err = "-" if r["error"] is None else f"{r['error']:.2e}"
        after = "-" if r["params_after"] is None else f"{r['params_after']:,}"
        print(
            f"{name:<24} {r['params']:>12,} {after:>12} {err:>11} {r['seconds']:>8.2f}  "
            f"{r['outcome']}",
            flush=True,
        )
        ok += r["outcome"].startswith("ok")
    print(f"{ok}/{len(names)} models widened exactly (factor {args.factor})")


if __name__ == "__main__":
    main()
