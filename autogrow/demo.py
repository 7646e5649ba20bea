"""Demo of the main job: widen a torchvision ResNet-18 by 1.5 and show that it is exact.

    python -m autogrow.demo [--model resnet18] [--factor 1.5]

Prints the inferred width groups, the parameter counts and the measured max relative error of
the outputs (eval mode) on a random batch that was not used for tracing.
"""

from __future__ import annotations

import argparse
import time

import torch

import autogrow
from autogrow.testing import randomize_constant_tensors
from autogrow.verify import compare, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18", help="a torchvision classification model")
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import torchvision
    except ImportError as e:
        raise SystemExit(
            "the demo needs torchvision: pip install -c constraints.txt -e '.[vision]'"
        ) from e

    torch.manual_seed(args.seed)
    model = randomize_constant_tensors(torchvision.models.get_model(args.model), args.seed).eval()
    x = torch.randn(2, 3, args.size, args.size)
    graph = autogrow.analyze(model, (x,))
    print(f"{args.model}: width groups inferred by autogrow.analyze\n")
    print(graph)
    start = time.perf_counter()
    wide = autogrow.widen(model, args.factor, example_inputs=(x,), seed=args.seed)
    seconds = time.perf_counter() - start
    fresh = torch.randn(4, 3, args.size, args.size)  # inputs the transform never saw
    error = compare(run(wide, (fresh,)), run(model, (fresh,))).max_error
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in wide.parameters())
    print(f"\nwiden(factor={args.factor}) took {seconds:.2f} s (verification included)")
    print(
        f"parameters: {before:,} -> {after:,} ({after / before:.2f}x), class {type(wide).__name__}"
    )
    print(f"max relative error of the outputs on fresh inputs: {error:.2e} (tolerance 1e-4)")


if __name__ == "__main__":
    main()
