"""Does growing a small Llama save compute? Growth operators vs LR-tuned scratch, in FLOPs.

``python -m benchmarks.lm_growth [--seeds 0 1 2] [--jobs 2] [--quick]`` (from the repository
root, dev venv) prints the tables and writes ``docs/figures/lm_growth.png`` (validation loss
against training FLOPs) and ``benchmarks/out/lm_growth.json`` (every curve).

**Corpus**: the docstrings of the top-level standard-library modules of the running Python
(``benchmarks.gpt2_growth.stdlib_docstrings``: about 0.9 MB of English technical prose on
CPython 3.11, shipped with every Python), UTF-8 **bytes** as tokens (vocabulary 256). Every
10th docstring is held out as the validation stream. Validation loss: mean next-byte
cross-entropy (nats/byte) over 192 fixed windows of the validation stream.

**Models**: ``transformers.LlamaForCausalLM`` from a config (no weights; RMSNorm, RoPE, SwiGLU,
untied embeddings, context 64). *small*: hidden 32, 2 heads of 16, MLP 88, 2 layers (42k
parameters). *wide*: hidden 64, 4 heads, MLP 176, 2 layers (133k; what
``autogrow.widen(small, 2.0)`` returns). *deep*: the small shape with 4 layers (67k; what depth
x2 returns). Sized for a shared 2-core machine: 600 steps of 1024 bytes are 4.6 tokens per
parameter of the wide model, the regime (<= 20) where growth is reported to help most.

**Training**: AdamW (weight decay 0.01), batch 16 x 64 bytes at random offsets (the same batch
sequence for every run of a seed), 600 steps in all (``FULL``; ``--quick``: ``QUICK``);
learning rate ``peak x shape(step)`` with ``shape``: linear warm-up over 30 steps, then cosine
decay to 0.1 of the peak at the last step (``benchmarks.accounting.lr_shape``). Every run,
scratch or grown, follows this one clock.

**Arms**: *scratch-wide* and *scratch-deep* train from a fresh initialisation for all the steps.
A grown arm trains *small* for the first quarter of the steps (the growth point, fixed by
this rule, not tuned: step 150), grows it and continues to the end (``OPERATORS``):
*widen-split* (exact x2 width, unequal shares, AdamW moments grown), *widen-paired* (exact x2
width, HyperCloning's paired +N/-N noise), *stack* (x2 depth by copying the trained layer stack
L1..Ln,L1..Ln, G_stack's order: ``autogrow.stack``; not function-preserving; each copy's
AdamW state copied from its source layer), *deepen-zero* (x2 depth: after
each layer a copy with zeroed output projections, ``autogrow.deepen``; exact). Width arms are
compared with scratch-wide, depth arms with scratch-deep. After growth the library's LR recipe
(``autogrow.training.lr.recipe`` through ``benchmarks.accounting.apply_recipe``) multiplies the
clock's rate: ``keep`` (x1), ``rewarm`` (a new linear warm-up over 30 steps), ``tenth`` (x0.1,
the Net2Net paper's), ``decay`` (LEMON's "keep the maximum rate, decay faster": x a cosine from
1 to 0 over the 450 steps left). Every operator runs with ``keep``; widen-split also with the
other three.

**Tuning, the same for every arm**: each arm (scratch or grown, and each recipe) runs at every
peak learning rate of the grid 1e-3, 3e-3 (for a grown arm the small phase uses the same
peak), and the arm's reported runs are those at the peak with the lowest final validation loss
averaged over the seeds. (A pilot with a wide model of hidden size 128, 600 steps, seed 0, gave
final losses 1.710 / 1.679 / 2.368 at 1e-3 / 3e-3 / 1e-2: 1e-2 is far too high.)

**FLOPs**: one training step (forward + backward, batch 16 x 64) of each model is counted once
with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and attention; elementwise
ops, the optimiser and evaluations are not counted) and multiplied by the steps; a grown arm's
count includes the small model's steps. Reported per operator and seed: the FLOPs at the first
evaluation (every 50 steps) whose validation loss is at or below the matching
scratch model's final one, divided by the FLOPs at which scratch first got there (the target
is <= 0.5); the final gap (grown minus scratch, nats/byte) and the total FLOPs ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

import autogrow
from benchmarks.accounting import (
    RECIPES,
    Budget,
    apply_recipe,
    best_peaks,
    cost_ratio,
    final,
    lr_shape,
    pm,
)
from benchmarks.gpt2_growth import byte_streams, stdlib_docstrings

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"
RESULTS = ROOT / "benchmarks" / "out"

CONTEXT, BATCH, WEIGHT_DECAY = 64, 16, 0.01
SMALL = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 88, "layers": 2}
WIDE = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 176, "layers": 2}
DEEP = {**SMALL, "layers": 4}


FULL = Budget(steps=600, warmup=30, eval_every=50, val_windows=192, lr_grid=(1e-3, 3e-3))
QUICK = Budget(steps=24, warmup=4, eval_every=6, val_windows=16, lr_grid=(3e-3,))


# ----------------------------------------------------------------------------------------------
# models, schedule, evaluation
# ----------------------------------------------------------------------------------------------


def llama(shape: dict, seed: int) -> nn.Module:
    """A byte-level ``LlamaForCausalLM`` of ``shape`` (no weights), initialised from ``seed``.

    >>> llama(SMALL, seed=0).config.hidden_size
    64
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = shape["num_attention_heads"]
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=False,
        bos_token_id=None,  # a byte vocabulary has no special tokens
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def windows(stream: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Rows ``stream[s : s + CONTEXT]`` for each start ``s``."""
    return stream[starts[:, None] + torch.arange(CONTEXT)]


@torch.no_grad()
def val_loss(model: nn.Module, val: torch.Tensor, n_windows: int) -> float:
    """Mean next-byte cross-entropy (nats) over ``n_windows`` evenly spaced windows, eval mode."""
    was_training = model.training
    model.eval()
    starts = torch.linspace(0, val.numel() - CONTEXT - 1, n_windows).long()
    total = 0.0
    for chunk in starts.split(64):
        x = windows(val, chunk)
        total += float(model(x, labels=x).loss) * len(chunk)
    model.train(was_training)
    return total / n_windows


def step_flops(model: nn.Module) -> int:
    """FLOPs of one training step's forward and backward (batch BATCH x CONTEXT), counted."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(BATCH, CONTEXT, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, labels=x).loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=WEIGHT_DECAY)


# ----------------------------------------------------------------------------------------------
# growth operators: each takes (small, its optimizer, example inputs, seed) and returns
# (grown model, grown optimizer or None for a fresh one)
# ----------------------------------------------------------------------------------------------

Operator = Callable[[nn.Module, torch.optim.Optimizer, tuple, int], tuple]


def widen_split(small, opt, example, seed):
    return autogrow.widen(small, 2.0, example_inputs=example, seed=seed, optimizer=opt)


def widen_paired(small, opt, example, seed):
    return autogrow.widen(
        small, 2.0, example_inputs=example, seed=seed, symmetry="paired", optimizer=opt
    )


def deepen_zero(small, opt, example, seed):
    after = [f"model.layers.{i}" for i in range(len(small.model.layers))]
    return autogrow.deepen(small, after=after, example_inputs=example, optimizer=opt)


def stack(small, opt, example, seed):
    return autogrow.stack(small, 2, order="repeat", example_inputs=example, optimizer=opt)


# name -> (operator, scratch arm it is compared with, function-preserving)
OPERATORS: dict[str, tuple[Operator, str, bool]] = {
    "widen-split": (widen_split, "scratch-wide", True),
    "widen-paired": (widen_paired, "scratch-wide", True),
    "stack": (stack, "scratch-deep", False),
    "deepen-zero": (deepen_zero, "scratch-deep", True),
}
SCRATCH = {"scratch-wide": WIDE, "scratch-deep": DEEP}
RECIPE_OPERATOR = "widen-split"  # the operator the recipes are compared on


# ----------------------------------------------------------------------------------------------
# one run (executed in a worker process)
# ----------------------------------------------------------------------------------------------

_DATA: dict = {}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    if not _DATA:
        _DATA["streams"] = byte_streams(stdlib_docstrings())
    return _DATA["streams"]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", module="transformers")
    _data()


def _train(model, opt, lr_at, budget, batches, start, stop, curve, flops0, per_step) -> None:
    """Train steps ``start..stop-1``; append (step, flops, val loss) every eval and at stop."""
    train_data, val = _data()
    model.train()
    for step in range(start, stop):
        if step % budget.eval_every == 0 and (not curve or curve[-1][0] != step):
            flops = flops0 + (step - start) * per_step
            curve.append((step, flops, val_loss(model, val, budget.val_windows)))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = windows(train_data, batches[step])
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    curve.append(
        (stop, flops0 + (stop - start) * per_step, val_loss(model, val, budget.val_windows))
    )


def run_arm(arm: str, recipe: str, seed: int, peak: float, budget: Budget) -> dict:
    """One arm at one peak LR for one seed: its curve [(step, flops, val loss)] and checks."""
    train_data, val = _data()
    gen = torch.Generator().manual_seed(seed)
    batches = torch.randint(
        0, train_data.numel() - CONTEXT - 1, (budget.steps, BATCH), generator=gen
    )
    t0 = time.perf_counter()
    curve: list[tuple[int, int, float]] = []
    out: dict = {"arm": arm, "recipe": recipe, "seed": seed, "peak": peak}
    if arm in SCRATCH:
        model = llama(SCRATCH[arm], seed)
        per_step = step_flops(model)
        _train(model, adamw(model), lambda s: peak * lr_shape(s, budget), budget, batches, 0,
               budget.steps, curve, 0, per_step)  # fmt: skip
        out["flops_per_step"] = {"model": per_step}
    else:
        operator, _, exact = OPERATORS[arm]
        small = llama(SMALL, seed)
        small_flops = step_flops(small)
        opt = adamw(small)
        g = budget.grow_at
        _train(small, opt, lambda s: peak * lr_shape(s, budget), budget, batches, 0, g, curve, 0,
               small_flops)  # fmt: skip
        before = curve[-1][2]
        example = (windows(train_data, batches[0][:1])[:, :8],)
        t_grow = time.perf_counter()
        grown = operator(small, opt, example, seed)
        model, new_opt = grown if isinstance(grown, tuple) else (grown, None)
        grow_seconds = time.perf_counter() - t_grow
        fresh = new_opt is None
        new_opt = adamw(model) if fresh else new_opt
        after = val_loss(model, val, budget.val_windows)
        per_step = step_flops(model)
        out["growth"] = {"before": before, "after": after, "exact": exact,
                         "seconds": grow_seconds, "fresh_optimizer": fresh}  # fmt: skip
        out["flops_per_step"] = {"small": small_flops, "model": per_step}
        curve.append((g, g * small_flops, after))  # right after growth, same FLOPs
        apply_recipe(new_opt, recipe, budget)  # scales the clock's rate from here on
        _train(model, new_opt, lambda s: peak * lr_shape(s, budget), budget, batches, g,
               budget.steps, curve, g * small_flops, per_step)  # fmt: skip
    out["curve"] = curve
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------------------------
# the grid of runs, and the report
# ----------------------------------------------------------------------------------------------


def tasks(seeds: list[int], budget: Budget) -> list[tuple[str, str, int, float]]:
    """Every (arm, recipe, seed, peak) the benchmark runs, the most expensive first."""
    arms = [(a, "keep") for a in SCRATCH] + [(a, "keep") for a in OPERATORS]
    arms += [(RECIPE_OPERATOR, r) for r in RECIPES if r != "keep"]
    return [(a, r, s, p) for a, r in arms for s in seeds for p in budget.lr_grid]


def _safe_run(arm: str, recipe: str, seed: int, peak: float, budget: Budget) -> dict:
    """run_arm, but a failure is a result (an operator the library lacks), not a crash."""
    try:
        return run_arm(arm, recipe, seed, peak, budget)
    except Exception as error:  # noqa: BLE001 - reported in the table
        message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return {"arm": arm, "recipe": recipe, "seed": seed, "peak": peak, "error": message}


def run_all(seeds: list[int], budget: Budget, jobs: int, threads: int, save) -> list[dict]:
    """Run every task (in ``jobs`` worker processes when > 1); ``save(runs)`` after each."""
    runs: list[dict] = []

    def done(r: dict) -> None:
        runs.append(r)
        status = r.get("error") or f"final {final(r):.4f}, {r['seconds']:.0f} s"
        print(f"  {r['arm']} [{r['recipe']}] seed {r['seed']} lr {r['peak']:g}: {status}",
              flush=True)  # fmt: skip
        save(runs)

    todo = tasks(seeds, budget)
    if jobs <= 1:
        _init_worker(threads)
        for t in todo:
            done(_safe_run(*t, budget))
        return runs
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_safe_run, *t, budget) for t in todo]
        for future in futures:
            done(future.result())
    return runs


def _index(runs: list[dict]) -> tuple[dict, dict]:
    peaks = best_peaks(runs)
    chosen = {}
    for r in runs:
        if "curve" in r and peaks.get((r["arm"], r["recipe"])) == r["peak"]:
            chosen[(r["arm"], r["recipe"], r["seed"])] = r
    return peaks, chosen


def grid_table(runs: list[dict]) -> str:
    """Mean final validation loss of every arm at every peak learning rate; the pick in bold."""
    peaks, _ = _index(runs)
    grid = sorted({r["peak"] for r in runs})
    head = ["arm", "recipe", *(f"lr {p:g}" for p in grid)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    arms = dict.fromkeys((r["arm"], r["recipe"]) for r in runs)
    for arm, recipe in arms:
        cols = [arm, recipe]
        for p in grid:
            at = [r for r in runs if (r["arm"], r["recipe"], r["peak"]) == (arm, recipe, p)]
            errors = [r["error"] for r in at if "error" in r]
            if errors:
                cols.append(f"failed: {errors[0]}")
                continue
            text = pm([final(r) for r in at], 4)
            cols.append(f"**{text}**" if peaks.get((arm, recipe)) == p else text)
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def operator_rows(runs: list[dict], seeds: list[int]) -> list[dict]:
    """Per grown arm (and recipe): the numbers of the main table, from the chosen runs."""
    peaks, chosen = _index(runs)
    rows = []
    for (arm, recipe), peak in peaks.items():
        if arm in SCRATCH:
            continue
        scratch_arm = OPERATORS[arm][1]
        pairs = [(chosen[(arm, recipe, s)], chosen[(scratch_arm, "keep", s)]) for s in seeds
                 if (arm, recipe, s) in chosen and (scratch_arm, "keep", s) in chosen]  # fmt: skip
        if not pairs:
            continue
        ratios = [cost_ratio(g, s) for g, s in pairs]
        rows.append({
            "arm": arm, "recipe": recipe, "peak": peak, "scratch": scratch_arm,
            "scratch_peak": peaks[(scratch_arm, "keep")],
            "jump": [g["growth"]["after"] - g["growth"]["before"] for g, _ in pairs],
            "ratios": ratios,
            "gaps": [final(g) - final(s) for g, s in pairs],
            "finals": [final(g) for g, _ in pairs],
            "scratch_finals": [final(s) for _, s in pairs],
            "total": [g["curve"][-1][1] / s["curve"][-1][1] for g, s in pairs],
        })  # fmt: skip
    return rows


def _ratio_text(ratios: list[float | None]) -> str:
    hit = [r for r in ratios if r is not None]
    if not hit:
        return f"not reached (0/{len(ratios)})"
    return f"{pm(hit, 2)} ({len(hit)}/{len(ratios)} seeds)"


def main_table(rows: list[dict], recipe: str | None = "keep") -> str:
    """The operators' table (``recipe``: only rows with that recipe; None: the recipe rows)."""
    head = ["operator", "recipe", "lr", "loss change at growth", "final val loss",
            "scratch (lr)", "final gap", "FLOPs to scratch's final loss / scratch's",
            "total FLOPs / scratch's"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if recipe is not None and r["recipe"] != recipe:
            continue
        if recipe is None and r["arm"] != RECIPE_OPERATOR:
            continue
        jump = max(r["jump"], key=abs)
        cols = [r["arm"], r["recipe"], f"{r['peak']:g}", f"{jump:+.2e} (largest)",
                pm(r["finals"], 4), f"{pm(r['scratch_finals'], 4)} ({r['scratch']}, "
                f"{r['scratch_peak']:g})", pm(r["gaps"], 4, sign=True),
                _ratio_text(r["ratios"]), pm(r["total"], 2)]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def findings(rows: list[dict]) -> list[str]:
    """One line per operator (target met or not) and the recipe the data supports."""
    lines = []
    for r in rows:
        if r["recipe"] != "keep":
            continue
        hit = [x for x in r["ratios"] if x is not None]
        mean = statistics.fmean(hit) if hit else None
        verdict = ("meets" if mean is not None and len(hit) == len(r["ratios"]) and mean <= 0.5
                   else "misses")  # fmt: skip
        seeds = f"{len(hit)}/{len(r['ratios'])} seeds"
        ratio = (
            "never reaches it"
            if mean is None
            else f"reaches it at {mean:.2f} x its FLOPs ({seeds})"
        )
        gap = statistics.fmean(r["gaps"])
        lines.append(
            f"{r['arm']}: {r['scratch']}'s final loss: {ratio}; final gap "
            f"{gap:+.4f} nats/byte; {verdict} the target (<= 0.5 in every seed)"
        )
    recipes = [r for r in rows if r["arm"] == RECIPE_OPERATOR]
    if len(recipes) > 1:
        best = min(recipes, key=lambda r: statistics.fmean(r["finals"]))
        order = sorted(recipes, key=lambda r: statistics.fmean(r["finals"]))
        lines.append(
            f"LR recipe after {RECIPE_OPERATOR}: lowest mean final validation loss with "
            f"'{best['recipe']}' (" + ", ".join(
                f"{r['recipe']} {statistics.fmean(r['finals']):.4f}" for r in order) + ")"
        )  # fmt: skip
    return lines


def plot(runs: list[dict], seeds: list[int], path: Path) -> None:
    """Validation loss against training FLOPs, mean over seeds, at each arm's chosen LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, chosen = _index(runs)
    panels = [
        ("x2 width (vs scratch-wide)", ["scratch-wide", "widen-split", "widen-paired"], "keep"),
        ("x2 depth (vs scratch-deep)", ["scratch-deep", "stack", "deepen-zero"], "keep"),
        (f"LR recipes after {RECIPE_OPERATOR}", [RECIPE_OPERATOR], None),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), sharey=True)
    for ax, (title, arms, only) in zip(axes, panels):
        keys = sorted({(a, r) for a, r, _ in chosen if a in arms and (only is None or r == only)})
        keys += [(s, "keep") for s in SCRATCH if only is None and (s, "keep", seeds[0]) in chosen
                 and OPERATORS[RECIPE_OPERATOR][1] == s]  # fmt: skip
        for arm, recipe in keys:
            curves = [
                chosen[(arm, recipe, s)]["curve"] for s in seeds if (arm, recipe, s) in chosen
            ]
            n = min(len(c) for c in curves)
            x = [p[1] / 1e12 for p in curves[0][:n]]
            y = [statistics.fmean([c[i][2] for c in curves]) for i in range(n)]
            label = arm if only is not None else f"{arm} [{recipe}]"
            ax.plot(x, y, lw=1.4, ls="--" if arm in SCRATCH else "-", label=label)
        scratch = [k for k in keys if k[0] in SCRATCH]
        if scratch:
            target = statistics.fmean([final(chosen[(*scratch[0], s)]) for s in seeds])
            ax.axhline(target, color="grey", ls=":", lw=1)
        ax.set_title(title)
        ax.set_xlabel("training TFLOPs (forward + backward, counted)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    finals = [final(r) for r in chosen.values()]
    axes[0].set_ylim(min(finals) - 0.05, min(finals) + 1.0)
    axes[0].set_ylabel("validation loss (nats / byte)")
    fig.suptitle(f"Byte-level Llama on stdlib docstrings: grown vs scratch, {len(seeds)} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: list[dict], seeds: list[int], budget: Budget, figure: Path | None) -> dict:
    """Print and return the tables; draw the figure."""
    rows = operator_rows(runs, seeds)
    tables = {"grid": grid_table(runs), "operators": main_table(rows),
              "recipes": main_table(rows, recipe=None),
              "findings": "\n".join(f"- {line}" for line in findings(rows))}  # fmt: skip
    print("\nfinal validation loss per arm and peak learning rate (mean ± sd over seeds; "
          "bold: the chosen one)\n" + tables["grid"])  # fmt: skip
    print(f"\noperators (growth at step {budget.grow_at} of {budget.steps}, recipe keep)\n"
          + tables["operators"])  # fmt: skip
    print(f"\nLR recipes after growth ({RECIPE_OPERATOR})\n" + tables["recipes"])
    print("\n" + tables["findings"])
    if figure is not None:
        plot(runs, seeds, figure)
        print(f"wrote {figure}")
    return {"rows": rows, "tables": tables}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--figure", type=Path, default=FIGURES / "lm_growth.png")
    parser.add_argument("--out", type=Path, default=RESULTS / "lm_growth.json")
    parser.add_argument("--report", type=Path, help="a saved lm_growth.json: only report it")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="transformers")
    budget = QUICK if args.quick else FULL
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        budget = Budget(**{k: tuple(v) if k == "lr_grid" else v
                           for k, v in saved["meta"]["budget"].items()})  # fmt: skip
        result = report(saved["runs"], saved["meta"]["seeds"], budget, args.figure)
        return {**result, "runs": saved["runs"], "meta": saved["meta"], "budget": budget}
    meta = {"python": platform.python_version(), "torch": torch.__version__,
            "seeds": args.seeds,
            "budget": vars(budget) | {"lr_grid": list(budget.lr_grid)}}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(runs: list[dict]) -> None:
        args.out.write_text(json.dumps({"meta": meta, "runs": runs}))

    t0 = time.perf_counter()
    runs = run_all(args.seeds, budget, args.jobs, args.threads, save)
    print(f"lm_growth: {len(runs)} runs in {(time.perf_counter() - t0) / 60:.1f} min; "
          f"wrote {args.out}", flush=True)  # fmt: skip
    result = report(runs, args.seeds, budget, args.figure)
    return {**result, "runs": runs, "meta": meta, "budget": budget}


if __name__ == "__main__":
    main()
