"""Second evidence setting: a tiny residual network (BatchNorm, shortcuts) on MNIST-5k.

``python -m benchmarks.tiny_resnet [--seeds 0 1 2]`` (from the repository root) prints the
tables and writes ``docs/figures/evidence_tiny_resnet.png`` and ``benchmarks/out/tiny_resnet.json``.

The model: a 3x3 stride-2 stem, two torchvision ``BasicBlock``s at width ``w`` (14x14), a
stride-2 ``BasicBlock`` to ``2w`` and one more at ``2w`` (7x7), global average pooling, a
linear classifier. The teacher (``w = 8``) is trained for 3 epochs (SGD, momentum 0.9,
lr 0.02, batch 64). Then, for the same number of steps (6 epochs):

* **scratch**: the wide model (``w = 16``) from a fresh initialisation, lr 0.02;
* **net2wider**: ``autogrow.widen(teacher, 2.0)`` (the same architecture as scratch), lr 0.002;
* **random-pad**: the fresh wide model with the teacher's weights in its leading slices, lr 0.002;
* **net2deeper**: ``autogrow.deepen(teacher)`` (a zeroed copy of the last block of each stage),
  lr 0.002, and **random-init** (the same, the new blocks re-initialised), lr 0.002.

The number reported is the *step ratio*: the optimiser steps the grown student needs to reach
(on the validation set, evaluated 4 times per epoch) the final accuracy of the wide model
trained from scratch, divided by the steps scratch took. The teacher's own steps are not
counted (they are the investment growth reuses); the final gap is reported next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

import autogrow
from benchmarks.net2net_mnist import (
    FIGURES,
    RESULTS,
    Data,
    mean_sd,
    mnist5k,
    random_pad,
    reinit,
    train,
)

TEACHER_WIDTH, STUDENT_WIDTH = 8, 16
TEACHER_EPOCHS, STUDENT_EPOCHS = 3, 6
EVALS_PER_EPOCH = 4
BATCH = 64
LR_SCRATCH, LR_STUDENT = 0.02, 0.002


class TinyResNet(nn.Module):
    """Stem, two stages of two torchvision BasicBlocks (``w`` then ``2w`` channels), classifier.

    >>> TinyResNet(16)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, width: int = TEACHER_WIDTH) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
        )
        down = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2, down), BasicBlock(2 * w, 2 * w))
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def _fresh(width: int, seed: int) -> TinyResNet:
    torch.manual_seed(seed)
    return TinyResNet(width)


def final_accuracy(hist: dict) -> float:
    """The mean validation accuracy over the last epoch's evaluations.

    One evaluation is too noisy an endpoint: with BatchNorm and a from-scratch learning rate,
    the eval-mode accuracy of the scratch model swings by several points between evaluations.

    >>> final_accuracy({"acc": [0.1, 0.9, 0.92, 0.94, 0.96]})
    0.93
    """
    return round(statistics.fmean(hist["acc"][-EVALS_PER_EPOCH:]), 10)


def steps_to_reach(hist: dict, target: float) -> int | None:
    """The first evaluated step at which the validation accuracy is >= ``target``."""
    for step, acc in zip(hist["steps"], hist["acc"]):
        if acc >= target:
            return step
    return None


def run_seed(data: Data, seed: int, deeper: bool = True) -> dict:
    """Teacher, scratch and the grown students for one seed: their histories."""
    t0 = time.perf_counter()
    kw = {"seed": seed, "batch_size": BATCH, "evals_per_epoch": EVALS_PER_EPOCH}
    teacher = _fresh(TEACHER_WIDTH, seed)
    hist = {"teacher": train(teacher, data, lr=LR_SCRATCH, epochs=TEACHER_EPOCHS, **kw)}
    teacher.eval()  # grow from the eval-mode function (running statistics)
    x = (torch.zeros(1, 1, 28, 28),)
    students = {
        "scratch": (_fresh(STUDENT_WIDTH, seed + 1), LR_SCRATCH),
        "net2wider": (autogrow.widen(teacher, 2.0, example_inputs=x, seed=seed), LR_STUDENT),
        "random-pad": (random_pad(teacher, _fresh(STUDENT_WIDTH, seed + 1)), LR_STUDENT),
    }
    if deeper:
        deep = autogrow.deepen(teacher, example_inputs=x)
        new = [f"layer{i}.2" for i in (1, 2)]  # deepen appended one block to each stage
        students["net2deeper"] = (deep, LR_STUDENT)
        students["random-init"] = (reinit(deep, new, seed + 1), LR_STUDENT)
    kw["seed"] = seed + 1000  # the students all see the same batches
    for name, (model, lr) in students.items():
        hist[name] = train(model, data, lr=lr, epochs=STUDENT_EPOCHS, **kw).as_dict()
    hist["teacher"] = hist["teacher"].as_dict()
    print(f"  seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return hist


def summary(results: dict) -> tuple[str, list[float]]:
    """Markdown table per seed: final accuracies, steps to scratch's final accuracy, ratio."""
    head = ["seed", "teacher acc", "scratch final acc (steps)", "student", "start acc", "final acc",
            "steps to scratch's final acc", "ratio"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios: list[float] = []
    for s, r in results.items():
        target, total = final_accuracy(r["scratch"]), r["scratch"]["steps"][-1]
        for m in [k for k in r if k not in ("teacher", "scratch")]:
            reached = steps_to_reach(r[m], target)
            ratio = reached / total if reached is not None else None
            if m == "net2wider" and ratio is not None:
                ratios.append(ratio)
            cols = [s, f"{r['teacher']['acc'][-1] * 100:.1f} %", f"{target * 100:.1f} % ({total})",
                    m, f"{r[m]['acc'][0] * 100:.1f} %", f"{final_accuracy(r[m]) * 100:.1f} %",
                    "not reached" if reached is None else str(reached),
                    "–" if ratio is None else f"{ratio:.3f}"]  # fmt: skip
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines), ratios


def plot(results: dict, path: Path) -> None:
    """Validation accuracy of scratch and the students over steps (mean, min-max band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(results)
    colors = {"scratch": "black", "net2wider": "tab:blue", "random-pad": "tab:orange",
              "net2deeper": "tab:green", "random-init": "tab:red"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for m, color in colors.items():
        if m not in results[seeds[0]]:
            continue
        steps = np.array(results[seeds[0]][m]["steps"])
        ys = np.array([results[s][m]["acc"] for s in seeds]) * 100
        ax.plot(steps, ys.mean(0), color=color, label=m, lw=1.5)
        ax.fill_between(steps, ys.min(0), ys.max(0), color=color, alpha=0.15)
    target = statistics.fmean(final_accuracy(results[s]["scratch"]) for s in seeds) * 100
    ax.axhline(target, color="grey", ls="--", lw=1, label="scratch, final (last-epoch mean)")
    ax.set_ylim(max(0.0, target - 15), 100)
    ax.set_xlabel(f"SGD steps (batch {BATCH})")
    ax.set_ylabel("validation accuracy, %")
    ax.set_title(f"TinyResNet on MNIST-5k: grown (w={TEACHER_WIDTH}→{STUDENT_WIDTH}) vs scratch, "
                 f"{len(seeds)} seeds")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-deeper", action="store_true", help="skip the deepen students")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG")
    args = parser.parse_args(argv)
    data = mnist5k()
    print(f"TinyResNet MNIST-5k: seeds {args.seeds}", flush=True)
    results = {str(s): run_seed(data, s, not args.no_deeper) for s in args.seeds}
    text, ratios = summary(results)
    print("\n" + text)
    if ratios:
        mu, sd = mean_sd(ratios)
        print(f"\nnet2wider step ratio: {mu:.3f} ± {sd:.3f} ({len(ratios)}/{len(results)} seeds "
              "reached scratch's final accuracy; target <= 0.2)")  # fmt: skip
    else:
        print("\nnet2wider never reached scratch's final accuracy (no step ratio)")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "evidence_tiny_resnet.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tiny_resnet.json").write_text(json.dumps(results))
    return {"results": results, "ratios": ratios, "table": text}


if __name__ == "__main__":
    main()
