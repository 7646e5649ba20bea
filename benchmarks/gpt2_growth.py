"""A tiny GPT-2 grown x2 in width mid-training vs the same wide model trained from scratch.

``python -m benchmarks.gpt2_growth [--seeds 0 1 2] [--steps 1200] [--grow-at 400]`` (from the
repository root, dev venv) prints, per seed, the validation loss right before and right after
growth (they must be equal) and a table of the steps each run needs to reach the wide
from-scratch model's final validation loss; it writes ``docs/figures/gpt2_growth.png`` (the
curves) and ``benchmarks/out/gpt2_growth.json`` (every number).

**Corpus**: the docstrings (module, class and function) of the top-level ``*.py`` modules of the
running Python's standard library, in file-name order, joined by blank lines: about 0.9 MB of
English technical prose on CPython 3.11, shipped with every Python (the exact text depends on the
Python version; the JSON records it). Tokens are UTF-8 **bytes** (vocabulary 256, no tokenizer).
Every 10th docstring goes to the validation stream, the rest to the training stream.

**Models** (``GPT2LMHeadModel`` from a config, no pretrained weights, dropout 0, context 64):
small ``n_embd=64, n_head=4`` and wide ``n_embd=128, n_head=8``, both ``n_layer=2``; the
wide model is exactly the architecture ``autogrow.widen(small, 2.0)`` returns (hidden size,
heads and the MLP's 4x hidden all doubled; head size 16 kept; input and output embeddings tied).

**Training**: AdamW (lr 3e-3, weight decay 0.01), 50 linear warm-up steps then constant, batch
16 x 64 tokens drawn at random offsets (the same batch sequence for every run of a seed).

* **scratch**: the wide model from a fresh initialisation, ``--steps`` steps;
* **grown**: the small model for ``--grow-at`` steps, then
  ``autogrow.widen(small, 2.0, optimizer=opt)``, which also returns the AdamW optimizer over the
  new parameters with its moments grown by the same unit mapping (docs/training-state.md), and
  the wide model trains on for the remaining steps at the same learning rate;
* **small**: the small model continued to ``--steps`` (for the figure: what growth adds).

The validation loss (mean cross-entropy in nats per byte over 256 fixed windows of 64 bytes) is
measured every 50 steps. Reported per seed: the first measured step at which each run's
validation loss is at or below the target (scratch's final validation loss), the grown run's
steps both in total and after growth, the training seconds to the target (optimiser steps only,
evaluation excluded; 1 torch thread) and the final gap (grown minus scratch at the last step).
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import platform
import statistics
import sysconfig
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import autogrow

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
RESULTS = ROOT / "benchmarks" / "out"

CONTEXT, BATCH, LR, WARMUP, WEIGHT_DECAY = 64, 16, 3e-3, 50, 0.01
SMALL = {"n_embd": 64, "n_head": 4, "n_layer": 2}
EVAL_EVERY, VAL_WINDOWS = 50, 256


# ----------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------


def stdlib_docstrings() -> list[str]:
    """The docstrings of the top-level standard-library modules, in file-name order.

    >>> docs = stdlib_docstrings()
    >>> len(docs) > 1000 and all(isinstance(d, str) and d for d in docs)
    True
    """
    docs: list[str] = []
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # e.g. lib2to3 test fixtures; none at top level in 3.10-3.12
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return docs


def byte_streams(docs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) byte tensors: every 10th docstring goes to validation.

    >>> train, val = byte_streams(["abc", "d"] * 10)
    >>> train.dtype, int(val.numel()) > 0
    (torch.int64, True)
    """

    def encode(parts: list[str]) -> torch.Tensor:
        data = "\n\n".join(parts).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()

    return encode([d for i, d in enumerate(docs) if i % 10]), encode(docs[::10])


# ----------------------------------------------------------------------------------------------
# models and training
# ----------------------------------------------------------------------------------------------


def gpt2(n_embd: int, n_head: int, n_layer: int, seed: int) -> torch.nn.Module:
    """A byte-level GPT-2 (no pretrained weights, dropout 0), initialised from ``seed``.

    >>> gpt2(64, 4, 2, seed=0).config.n_embd
    64
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=256,
        n_positions=CONTEXT,
        n_embd=n_embd,
        n_head=n_head,
        n_layer=n_layer,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,  # GPT-2's 50256 lies outside a byte vocabulary
        eos_token_id=None,
        loss_type="ForCausalLM",
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def windows(stream: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Rows ``stream[s : s + CONTEXT]`` for each start ``s``."""
    return stream[starts[:, None] + torch.arange(CONTEXT)]


@torch.no_grad()
def val_loss(model: torch.nn.Module, val: torch.Tensor) -> float:
    """Mean next-byte cross-entropy (nats) over VAL_WINDOWS evenly spaced windows, eval mode."""
    was_training = model.training
    model.eval()
    starts = torch.linspace(0, val.numel() - CONTEXT - 1, VAL_WINDOWS).long()
    total = 0.0
    for chunk in starts.split(64):
        x = windows(val, chunk)
        total += float(model(x, labels=x).loss) * len(chunk)
    model.train(was_training)
    return total / VAL_WINDOWS


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def set_lr(opt: torch.optim.Optimizer, step: int) -> None:
    for group in opt.param_groups:
        group["lr"] = LR * min(1.0, (step + 1) / WARMUP)


@dataclass
class Run:
    """One training run's curve: validation loss at ``steps``; seconds of optimiser steps."""

    name: str
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # cumulative training time at each step

    def record(self, step: int, loss: float, seconds: float) -> None:
        self.steps.append(step)
        self.loss.append(loss)
        self.seconds.append(seconds)

    def first_at_or_below(self, target: float) -> tuple[int, float] | None:
        """(step, seconds) of the first evaluation with loss <= target, or None."""
        for s, v, t in zip(self.steps, self.loss, self.seconds):
            if v <= target:
                return s, t
        return None


def train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    run: Run,
    train_data: torch.Tensor,
    val: torch.Tensor,
    batches: torch.Tensor,
    start: int,
    stop: int,
    seconds: float = 0.0,
) -> float:
    """Train steps ``start..stop-1`` (batch starts ``batches[step]``), evaluating every
    EVAL_EVERY steps and at ``stop``; returns the cumulative training seconds."""
    model.train()
    for step in range(start, stop):
        if step % EVAL_EVERY == 0 and (not run.steps or run.steps[-1] != step):
            run.record(step, val_loss(model, val), seconds)
        t0 = time.perf_counter()
        set_lr(opt, step)
        x = windows(train_data, batches[step])
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - t0
    run.record(stop, val_loss(model, val), seconds)
    return seconds


def one_seed(seed: int, steps: int, grow_at: int, train_data, val) -> dict:
    """Run scratch, grown and small for one seed; return their curves and the growth check."""
    gen = torch.Generator().manual_seed(seed)
    batches = torch.randint(0, train_data.numel() - CONTEXT - 1, (steps, BATCH), generator=gen)
    wide_shape = {k: 2 * v if k != "n_layer" else v for k, v in SMALL.items()}

    scratch = Run("scratch")
    model = gpt2(**wide_shape, seed=seed)
    train(model, make_optimizer(model), scratch, train_data, val, batches, 0, steps)
    print(f"  seed {seed}: scratch final val loss {scratch.loss[-1]:.4f}", flush=True)

    small_run = Run("small")
    small = gpt2(**SMALL, seed=seed)
    opt = make_optimizer(small)
    sec = train(small, opt, small_run, train_data, val, batches, 0, grow_at)

    before = val_loss(small, val)
    t0 = time.perf_counter()
    example = (windows(train_data, batches[0][:1])[:, :8],)  # batch 1, 8 tokens
    wide, wide_opt = autogrow.widen(small, 2.0, example_inputs=example, seed=seed, optimizer=opt)
    widen_seconds = time.perf_counter() - t0
    after = val_loss(wide, val)
    tied = wide.lm_head.weight is wide.transformer.wte.weight
    print(
        f"  seed {seed}: val loss before growth {before:.6f}, after {after:.6f} "
        f"(|diff| {abs(after - before):.2e}); widen took {widen_seconds:.2f} s; "
        f"config n_embd={wide.config.n_embd} n_head={wide.config.n_head}; "
        f"embeddings tied: {tied}",
        flush=True,
    )

    grown = Run("grown", list(small_run.steps), list(small_run.loss), list(small_run.seconds))
    grown.steps[-1:], grown.loss[-1:] = [grow_at], [after]  # the point right after growth
    train(wide, wide_opt, grown, train_data, val, batches, grow_at, steps, sec)
    del wide, wide_opt
    train(small, opt, small_run, train_data, val, batches, grow_at, steps, sec)
    print(f"  seed {seed}: grown final {grown.loss[-1]:.4f}, small {small_run.loss[-1]:.4f}")
    return {
        "seed": seed,
        "growth": {"before": before, "after": after, "widen_seconds": widen_seconds},
        "tied": tied,
        "runs": {r.name: vars(r) for r in (scratch, grown, small_run)},
    }


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def summarise(result: dict, grow_at: int) -> dict:
    """Steps and seconds to the target (scratch's final validation loss) for one seed."""
    runs = {name: Run(**r) for name, r in result["runs"].items()}
    target = runs["scratch"].loss[-1]
    row: dict = {"seed": result["seed"], "target": target}
    for name in ("scratch", "grown", "small"):
        hit = runs[name].first_at_or_below(target)
        row[name] = None if hit is None else {"steps": hit[0], "seconds": hit[1]}
        row[f"{name}_final"] = runs[name].loss[-1]
    row["gap"] = runs["grown"].loss[-1] - target
    return row


def fmt(hit: dict | None, key: str, minus: int = 0) -> str:
    return "not reached" if hit is None else f"{hit[key] - minus:.0f}"


def print_table(rows: list[dict], grow_at: int) -> None:
    print(f"\nsteps to the wide-from-scratch final validation loss (growth at step {grow_at})")
    head = (
        "seed  target  scratch steps  grown steps (after growth)  scratch s  grown s  "
        "final gap  small final"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        g = r["grown"]
        after = "" if g is None else f" ({g['steps'] - grow_at})"
        print(
            f"{r['seed']:>4}  {r['target']:.4f}  {fmt(r['scratch'], 'steps'):>13}  "
            f"{fmt(g, 'steps') + after:>26}  {fmt(r['scratch'], 'seconds'):>9}  "
            f"{fmt(g, 'seconds'):>7}  {r['gap']:>+9.4f}  {r['small_final']:>11.4f}"
        )
    reached = [r for r in rows if r["grown"] is not None]
    if reached:
        ratio = [r["grown"]["steps"] / r["scratch"]["steps"] for r in reached]
        secs = [r["grown"]["seconds"] / r["scratch"]["seconds"] for r in reached]
        print(
            f"grown/scratch steps: {statistics.fmean(ratio):.2f} (seeds reaching: "
            f"{len(reached)}/{len(rows)}); seconds: {statistics.fmean(secs):.2f}; "
            f"mean final gap {statistics.fmean(r['gap'] for r in rows):+.4f} nats/byte"
        )


def plot(results: list[dict], grow_at: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {"scratch": "tab:blue", "grown": "tab:orange", "small": "tab:gray"}
    for i, res in enumerate(results):
        for name, r in res["runs"].items():
            label = name if i == 0 else None
            for ax, x in zip(axes, (r["steps"], r["seconds"])):
                ax.plot(x, r["loss"], color=colours[name], lw=1, alpha=0.8, label=label)
        target = res["runs"]["scratch"]["loss"][-1]
        for ax in axes:
            ax.axhline(target, color="tab:blue", ls=":", lw=0.8)
    axes[0].axvline(grow_at, color="k", ls="--", lw=0.8, label="growth (x2 width)")
    axes[0].set_xlabel("optimiser step")
    axes[1].set_xlabel("training seconds (1 CPU thread, evaluation excluded)")
    axes[0].set_ylabel("validation loss (nats / byte)")
    lo = min(min(r["loss"]) for res in results for r in res["runs"].values())
    axes[0].set_ylim(lo - 0.05, lo + 1.2)
    axes[0].legend()
    fig.suptitle("Tiny byte-level GPT-2 on stdlib docstrings: grown x2 vs wide from scratch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--grow-at", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figure", type=Path, default=FIGURES / "gpt2_growth.png")
    parser.add_argument("--report", type=Path, help="a saved gpt2_growth.json: only report it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="transformers")

    out = RESULTS / "gpt2_growth.json"
    if args.report is not None:  # tables and figure again from a saved run, no training
        saved = json.loads(args.report.read_text())
        report(saved["results"], int(saved["meta"]["args"]["grow_at"]), args.figure)
        return
    docs = stdlib_docstrings()
    train_data, val = byte_streams(docs)
    print(
        f"corpus: {len(docs)} stdlib docstrings (Python {platform.python_version()}): "
        f"{train_data.numel()} training bytes, {val.numel()} validation bytes"
    )
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "train_bytes": train_data.numel(),
        "val_bytes": val.numel(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(one_seed(seed, args.steps, args.grow_at, train_data, val))
        # after every seed, so that an interrupted run keeps what it measured
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        print(f"  wrote {out} (--report {out} redraws the table and figure)", flush=True)
    report(results, args.grow_at, args.figure)


def report(results: list[dict], grow_at: int, figure: Path) -> None:
    """Print the table and draw the figure for the runs of one or more seeds."""
    print_table([summarise(r, grow_at) for r in results], grow_at)
    plot(results, grow_at, figure)


if __name__ == "__main__":
    main()
