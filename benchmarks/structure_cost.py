"""What the re-trace of ``verify=False`` costs (autogrow/transforms/structure.py).

    python -m benchmarks.structure_cost

Times widen ×2 and deepen with ``verify=False`` on resnet18 (traced by fx) and timm's test_vit
(traced by torch.export), with the structure check and with it switched off; best of two,
one thread.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch


def _best(f: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import timm
    import torchvision

    import autogrow
    from autogrow.transforms.depth import DeepenTransform
    from autogrow.transforms.widen import WidenTransform

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    checks = WidenTransform.check_structure, DeepenTransform.check_structure
    models = [
        ("resnet18 (fx)", torchvision.models.resnet18(), torch.randn(1, 3, 64, 64)),
        ("test_vit (export)", timm.create_model("test_vit"), torch.randn(1, 3, 160, 160)),
    ]
    for name, model, x in models:
        model.eval()
        growths = [
            (
                "widen x2",
                lambda m=model, x=x: autogrow.widen(m, 2.0, example_inputs=(x,), verify=False),
            ),
            ("deepen", lambda m=model, x=x: autogrow.deepen(m, example_inputs=(x,), verify=False)),
        ]
        for label, grow in growths:
            with_check = _best(grow)
            WidenTransform.check_structure = DeepenTransform.check_structure = lambda *a: None
            try:
                without = _best(grow)
            finally:
                WidenTransform.check_structure, DeepenTransform.check_structure = checks
            print(f"{name} {label}: {without:.2f} s without the check, {with_check:.2f} s with")


if __name__ == "__main__":
    main()
