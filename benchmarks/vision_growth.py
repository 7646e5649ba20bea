"""Grown vs LR-tuned scratch on two small vision tasks, in counted FLOPs and in steps.

``python -m benchmarks.vision_growth [--seeds 0 1 2] [--cases digits-mlp tiny-resnet]
[--jobs 2] [--quick]`` (from the repository root) prints one table per case and writes
``benchmarks/out/vision_growth.json``.

Cases:

* **digits-mlp**: scikit-learn's ``load_digits`` (1797 8x8 images, flattened, scaled to
  [0, 1]; a fixed permutation holds out 360 for validation), an MLP ``64 -> 32 -> 10`` grown
  by ``autogrow.widen(mlp, 2.0)`` to ``64 -> 64 -> 10``, compared with ``64 -> 64 -> 10`` from
  scratch. This is the case where growth at 1/10 of the learning rate lost before (2x the
  scratch model's steps, about 1 point lower).
* **tiny-resnet**: ``benchmarks.tiny_resnet.TinyResNet`` on MNIST-5k (4000 / 1000), width 8
  grown by ``autogrow.widen(model, 2.0)`` to width 16, compared with width 16 from scratch.

Budgets (``CASES``): digits-mlp 600 steps (about 27 epochs), warm-up 30, evaluated every 20
steps, peaks 0.1 / 0.3 / 1.0; tiny-resnet 252 steps (4 epochs), warm-up 20, evaluated every
14 steps, peaks 0.02 / 0.05. Growth at a quarter of the steps.

The clock, the recipes and the tuning are those of ``benchmarks.lm_growth`` (see
``benchmarks.accounting``): SGD with momentum 0.9, batch 64, ``peak x lr_shape(step)``; the
grown arm trains the small model for the first quarter of the steps, widens it (SGD momentum
grown with it) and continues under each LR recipe; scratch and every recipe run at every peak of
the case's grid and keep the one with the best final accuracy averaged over seeds. Accuracy is
evaluated every ``eval_every`` steps; the *final accuracy* is the mean of the last ``LAST``
evaluations (one evaluation of a small model is noisy). Reported: the FLOPs to first reach
scratch's final accuracy / scratch's FLOPs to reach it (small model's training included), the
same in steps counting only the steps after growth (the Net2Net paper's way), the final gap.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from benchmarks.accounting import (
    RECIPES,
    Budget,
    apply_recipe,
    best_peaks,
    cost_ratio,
    final,
    first_reaching,
    lr_shape,
    pm,
)

RESULTS = Path(__file__).resolve().parent / "out"
BATCH, LAST = 64, 4


@dataclass(frozen=True)
class Case:
    name: str
    budget: Budget
    quick: Budget


CASES = {
    "digits-mlp": Case(
        "digits-mlp",
        Budget(steps=600, warmup=30, eval_every=20, lr_grid=(0.1, 0.3, 1.0)),
        Budget(steps=40, warmup=4, eval_every=8, lr_grid=(0.1,)),
    ),
    "tiny-resnet": Case(
        "tiny-resnet",
        Budget(steps=252, warmup=20, eval_every=14, lr_grid=(0.02, 0.05)),
        Budget(steps=16, warmup=2, eval_every=4, lr_grid=(0.05,)),
    ),
}


@functools.cache
def load(case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val) of a case, split by a fixed permutation."""
    if case == "digits-mlp":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))
        x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
        y = torch.tensor(y[order], dtype=torch.long)
        return x[360:], y[360:], x[:360], y[:360]
    from benchmarks.net2net_mnist import mnist5k

    d = mnist5k()
    return d.x_train, d.y_train, d.x_val, d.y_val


def build(case: str, wide: bool, seed: int) -> nn.Module:
    """The case's small (``wide=False``) or wide model, initialised from ``seed``."""
    torch.manual_seed(seed)
    if case == "digits-mlp":
        hidden = 64 if wide else 32
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    from benchmarks.tiny_resnet import TinyResNet

    return TinyResNet(16 if wide else 8)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    out = model(x)
    model.train(was_training)
    return float((out.argmax(1) == y).float().mean()), float(F.cross_entropy(out, y))


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward on a batch like ``x``, counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(case: str, arm: str, recipe: str, seed: int, peak: float, budget: Budget) -> dict:
    """One run: ``arm`` is ``scratch`` or ``widen-split``; the curve is (step, FLOPs, accuracy,
    validation loss, steps after growth)."""
    torch.set_num_threads(1)
    x_train, y_train, x_val, y_val = load(case)
    gen = torch.Generator().manual_seed(seed)
    batches = torch.randint(0, len(y_train), (budget.steps, BATCH), generator=gen)
    grow_at = 0 if arm == "scratch" else budget.grow_at
    model = build(case, arm == "scratch", seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    per_step = step_flops(model, x_train[:BATCH], y_train[:BATCH])
    flops, curve, out = 0, [], {"arm": arm, "recipe": recipe, "seed": seed, "peak": peak}

    def record(step: int) -> None:
        acc, loss = accuracy(model, x_val, y_val)
        curve.append((step, flops, acc, loss, max(0, step - grow_at)))

    t0 = time.perf_counter()
    for step in range(budget.steps):
        if step == grow_at and arm != "scratch":
            model.eval()  # grow the eval-mode function (BatchNorm running statistics)
            before = accuracy(model, x_val, y_val)
            model, opt = autogrow.widen(model, 2.0, example_inputs=(x_train[:1],), seed=seed,
                                        optimizer=opt)  # fmt: skip
            model.train()
            out["growth"] = {"before": before, "after": accuracy(model, x_val, y_val)}
            apply_recipe(opt, recipe, budget)  # scales the clock's rate from here on
            per_step = step_flops(model, x_train[:BATCH], y_train[:BATCH])
            record(step)
        elif step % budget.eval_every == 0:
            record(step)
        for group in opt.param_groups:
            group["lr"] = peak * lr_shape(step, budget)
        idx = batches[step]
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        flops += per_step
    record(budget.steps)
    return {**out, "curve": curve, "seconds": time.perf_counter() - t0}


def tasks(case: str, seeds: list[int], budget: Budget) -> list[tuple]:
    arms = [("scratch", "keep")] + [("widen-split", r) for r in RECIPES]
    return [(case, a, r, s, p) for a, r in arms for s in seeds for p in budget.lr_grid]


def table(runs: list[dict], seeds: list[int], budget: Budget) -> str:
    """Per recipe at its chosen peak, against scratch at its chosen peak (mean ± sd)."""
    peaks = best_peaks(runs, higher=True, last=LAST)
    chosen = {(r["arm"], r["recipe"], r["seed"]): r for r in runs
              if peaks[(r["arm"], r["recipe"])] == r["peak"]}  # fmt: skip
    head = ["arm", "recipe", "lr", "start acc (small's)", "final acc", "final gap (points)",
            "FLOPs to scratch's final acc / scratch's",
            "steps after growth / scratch's steps"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scratch = [chosen[("scratch", "keep", s)] for s in seeds]
    target = pm([100 * final(r, LAST) for r in scratch], 2)
    lines.append(f"| scratch | – | {peaks[('scratch', 'keep')]:g} | – | {target} % | – | 1 | 1 |")
    for recipe in RECIPES:
        grown = [chosen[("widen-split", recipe, s)] for s in seeds]
        flops = [cost_ratio(g, s, higher=True, last=LAST) for g, s in zip(grown, scratch)]
        steps = []
        for g, s in zip(grown, scratch):
            t = final(s, LAST)
            mine = first_reaching([(p[0], p[4], p[2]) for p in g["curve"]], t, higher=True)
            theirs = first_reaching(s["curve"], t, higher=True)
            steps.append(None if mine is None or theirs is None else mine[1] / theirs[0])
        cols = ["widen-split", recipe, f"{peaks[('widen-split', recipe)]:g}",
                pm([100 * g["growth"]["after"][0] for g in grown], 1) + " %",
                pm([100 * final(g, LAST) for g in grown], 2) + " %",
                pm([100 * (final(g, LAST) - final(s, LAST)) for g, s in zip(grown, scratch)], 2,
                   sign=True), _hits(flops), _hits(steps)]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _hits(values: list[float | None]) -> str:
    hit = [v for v in values if v is not None]
    if not hit:
        return f"not reached (0/{len(values)})"
    return f"{pm(hit, 2)} ({len(hit)}/{len(values)} seeds)"


def _run(args: tuple) -> dict:
    return run(*args)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "vision_growth.json")
    parser.add_argument("--report", type=Path, help="a saved vision_growth.json: only report it")
    args = parser.parse_args(argv)
    results: dict = {}
    if args.report is not None:  # the tables again from a saved run, no training
        saved = json.loads(args.report.read_text())
        for name, res in saved.items():
            budget = Budget(**{**res["budget"], "lr_grid": tuple(res["budget"]["lr_grid"])})
            seeds = sorted({r["seed"] for r in res["runs"]})
            res["table"] = table(res["runs"], seeds, budget)
            print(f"\n{name}\n" + res["table"])
        return saved
    for name in args.cases:
        budget = CASES[name].quick if args.quick else CASES[name].budget
        todo = [(*t, budget) for t in tasks(name, args.seeds, budget)]
        t0 = time.perf_counter()
        if args.jobs <= 1:
            runs = [_run(t) for t in todo]
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, context) as pool:
                runs = list(pool.map(_run, todo))
        text = table(runs, args.seeds, budget)
        print(f"\n{name}: {len(runs)} runs, {(time.perf_counter() - t0) / 60:.1f} min; growth "
              f"at step {budget.grow_at} of {budget.steps}, lr grid {list(budget.lr_grid)}\n"
              + text, flush=True)  # fmt: skip
        results[name] = {"runs": runs, "table": text, "budget": vars(budget)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({k: {**v, "budget": {**v["budget"], "lr_grid": list(
        v["budget"]["lr_grid"])}} for k, v in results.items()}))  # fmt: skip
    return results


if __name__ == "__main__":
    main()
