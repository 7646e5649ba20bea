"""Symmetry study: do widen's replicated units diverge in training, and does it matter?

``python -m benchmarks.symmetry [--seeds 0 1] [--lr 0.001 0.01]`` (from the repository root)
prints a table and writes ``docs/figures/evidence_symmetry.png`` and
``benchmarks/out/symmetry.json``.

The teacher is the Keras-port CNN of ``benchmarks.net2net_mnist`` (trained 3 epochs on
MNIST-5k); conv1 and fc1 are widened 64 -> 128 with each of

* ``symmetry="none"``: the paper's equal division of the outgoing weights;
* ``symmetry="split"`` (autogrow's default): unequal random shares that sum to the original;
* ``symmetry="none", noise=0.05``: the Keras port's choice (noise of 0.05 x std on the
  replicated outgoing weights; no longer exactly the teacher's function);
* ``symmetry="split", noise=0.05``.

and trained 3 epochs (SGD, momentum 0.9, batch 32) at each learning rate. Replicas are the
units whose incoming weights (weight row and bias) are equal right after widening; their
divergence is measured as the mean pairwise cosine similarity of their incoming weights
(1.0: still identical units), for conv1 and fc1, at 4 points per epoch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from benchmarks.net2net_mnist import (
    CONV1,
    FC1,
    FIGURES,
    RESULTS,
    Data,
    cnn,
    mean_sd,
    mnist5k,
    train,
)

VARIANTS = {
    "none": {"symmetry": "none"},
    "split": {"symmetry": "split"},
    "none + noise 0.05": {"symmetry": "none", "noise": 0.05},
    "split + noise 0.05": {"symmetry": "split", "noise": 0.05},
}
LAYERS = {"conv1": CONV1, "fc1": FC1}


def incoming(model: nn.Module, name: str) -> torch.Tensor:
    """One row per output unit: the flattened incoming weights and the bias."""
    m = model.get_submodule(name)
    return torch.cat([m.weight.detach().flatten(1), m.bias.detach()[:, None]], 1)


def replica_groups(rows: torch.Tensor) -> list[list[int]]:
    """Indices of units with identical incoming weights (groups of two or more).

    >>> replica_groups(torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]))
    [[0, 2]]
    """
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(inverse.tolist()):
        groups.setdefault(g, []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def mean_cosine(rows: torch.Tensor, groups: list[list[int]]) -> float:
    """Mean cosine similarity over all pairs of units within each replica group."""
    sims = [
        F.cosine_similarity(rows[i], rows[j], dim=0).item()
        for g in groups
        for i, j in itertools.combinations(g, 2)
    ]
    return float(np.mean(sims))


def run_seed(data: Data, seed: int, lrs: list[float], epochs: int = 3) -> dict:
    """Teacher, then every variant at every learning rate: accuracy and cosine histories."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    teacher = cnn()
    teacher_hist = train(teacher, data, lr=0.01, epochs=epochs, seed=seed)
    x = (torch.zeros(1, 1, 28, 28),)
    out: dict = {"teacher": teacher_hist.as_dict()}
    for variant, options in VARIANTS.items():
        for lr in lrs:
            student = autogrow.widen(
                teacher, {CONV1: 128, FC1: 128}, example_inputs=x, seed=seed, **options
            )
            groups = {k: replica_groups(incoming(student, n)) for k, n in LAYERS.items()}
            cos: dict[str, list[float]] = {k: [] for k in LAYERS}

            def on_eval(model: nn.Module, step: int, groups=groups, cos=cos) -> None:
                for k, name in LAYERS.items():
                    cos[k].append(mean_cosine(incoming(model, name), groups[k]))

            hist = train(student, data, lr=lr, epochs=epochs, seed=seed + 1000,
                         evals_per_epoch=4, on_eval=on_eval)  # fmt: skip
            out[f"{variant} @ lr {lr:g}"] = {
                **hist.as_dict(),
                "cos": cos,
                "replicas": {k: sum(len(g) for g in v) for k, v in groups.items()},
            }
    print(f"  seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def table(results: dict) -> str:
    """Markdown table: start loss, final cosine similarities and final accuracy per run."""
    seeds = list(results)
    runs = [k for k in results[seeds[0]] if k != "teacher"]
    head = ["variant @ lr", "start loss − teacher's", "conv1 cos (end)", "fc1 cos (end)",
            "final val loss", "final val acc"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        rs = [results[s][run] for s in seeds]
        delta = [r["loss"][0] - results[s]["teacher"]["loss"][-1] for s, r in zip(seeds, rs)]
        cells = [run, f"{max(delta, key=abs):+.2e}"]
        for k in LAYERS:
            mu, sd = mean_sd([r["cos"][k][-1] for r in rs])
            cells.append(f"{mu:.6f} ± {sd:.6f}")
        mu, sd = mean_sd([r["loss"][-1] for r in rs])
        cells.append(f"{mu:.4f} ± {sd:.4f}")
        mu, sd = mean_sd([r["acc"][-1] * 100 for r in rs])
        cells.append(f"{mu:.2f} ± {sd:.2f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """1 − cosine similarity of replicas over training (log scale), per layer and lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(results)
    runs = [k for k in results[seeds[0]] if k != "teacher"]
    lrs = sorted({r.split(" @ lr ")[1] for r in runs}, key=float)
    fig, axes = plt.subplots(len(lrs), 2, figsize=(11, 3.6 * len(lrs)), squeeze=False)
    colors = dict(zip(VARIANTS, ["tab:red", "tab:blue", "tab:orange", "tab:green"]))
    for row, lr in enumerate(lrs):
        for col, layer in enumerate(LAYERS):
            ax = axes[row][col]
            for variant, color in colors.items():
                run = f"{variant} @ lr {lr}"
                steps = results[seeds[0]][run]["steps"]
                ys = np.array([results[s][run]["cos"][layer] for s in seeds])
                gap = np.maximum(1.0 - ys.mean(0), 1e-9)  # 1e-9 stands for "identical"
                ax.plot(steps, gap, color=color, label=variant, marker="o", ms=2.5)
            ax.set_yscale("log")
            ax.set_ylim(5e-10, 1)
            ax.set_title(f"{layer} replicas, lr {lr} ({len(seeds)} seed(s))")
            ax.set_xlabel("SGD steps (batch 32)")
            ax.set_ylabel("1 − cosine similarity")
            ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.001, 0.01])
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG")
    args = parser.parse_args(argv)
    data = mnist5k()
    print(f"Symmetry study: seeds {args.seeds}, learning rates {args.lr}", flush=True)
    results = {str(s): run_seed(data, s, args.lr) for s in args.seeds}
    text = table(results)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "evidence_symmetry.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "symmetry.json").write_text(json.dumps(results))
    return {"results": results, "table": text}


if __name__ == "__main__":
    main()
