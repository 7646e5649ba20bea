"""Growth search vs the same search trained from scratch, on MNIST-5k (issue 5, acceptance 5).

Both searches use the same space, sampler, seed and number of trials; with ``from_scratch``
every trial keeps the grown architecture but starts from random weights, with the same
per-trial budget (one epoch; the baseline's root too, where the growth search's root trains
``seed_epochs``). The x axis is the training steps the whole search has spent
so far (every finished trial's steps, in the order trials finished); the y axis the best
validation accuracy so far. Target: the growth search reaches the scratch search's best
accuracy in at most 1/3 of the steps the scratch search needed to reach it.

    python -m benchmarks.search_vs_scratch                 # mnist_cnn, 16 trials each, seeds 0 1 2
    python -m benchmarks.search_vs_scratch --trials 30 --space search_spaces/mnist_resnet.py

Prints a table and writes ``docs/figures/search_vs_scratch.png`` (or ``--figure``) and
``benchmarks/out/search_vs_scratch.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def first_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first total-steps value at which the best-so-far accuracy is >= ``target``.

    >>> first_reaching([(10, 0.5), (20, 0.7), (30, 0.9)], 0.7)
    20
    """
    return next((steps for steps, acc in curve if acc >= target), None)


def search(space, trials: int, run_dir: Path, scratch: bool):
    from autogrow.search.runner import run

    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    study = run(
        space,
        trials,
        run_dir=run_dir,
        study_name=f"bench-{'scratch' if scratch else 'growth'}",
        from_scratch=scratch,
        progress=True,
        summary=False,
    )
    return study, time.perf_counter() - start


def summarize(study, seconds: float) -> dict:
    """What the comparison needs from one finished search."""
    from autogrow.search.report import _completed, search_curve

    done = _completed(study)
    best = max(done, key=lambda t: t.user_attrs["accuracy"])
    return {
        "curve": search_curve(study),
        "best": best.user_attrs["accuracy"],
        "best_trial": best.number,
        "best_params": best.user_attrs["params"],
        "best_cum": best.user_attrs["cumulative_steps"],
        "total": sum(int(t.user_attrs.get("train_steps", 0)) for t in study.get_trials()),
        "seconds": seconds,
        "completed": len(done),
        "trials": len(study.get_trials()),
    }


def compare(growth: dict, scratch: dict) -> dict:
    """Steps each search spent until it first held the scratch search's best accuracy."""
    s_reach = first_reaching(scratch["curve"], scratch["best"])
    g_reach = first_reaching(growth["curve"], scratch["best"])
    return {
        "scratch_steps": s_reach,
        "growth_steps": g_reach,
        "ratio": None if g_reach is None else g_reach / s_reach,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "mnist_cnn.py"))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "runs" / "search_vs_scratch"))
    parser.add_argument(
        "--figure", default=str(ROOT / "docs" / "figures" / "search_vs_scratch.png")
    )
    parser.add_argument(
        "--json", default=str(ROOT / "benchmarks" / "out" / "search_vs_scratch.json")
    )
    parser.add_argument(
        "--seed-epochs",
        type=int,
        default=None,
        help="override the space's training.seed_epochs (the growth search's root budget); "
        "with the per-trial epochs, both searches train every trial alike",
    )
    parser.add_argument(
        "--analyse-only", action="store_true", help="read the studies in --out, run nothing"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    import optuna

    from autogrow.search import load_space
    from autogrow.search.runner import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_space(args.space)
    if args.seed_epochs is not None:
        training = dataclasses.replace(base.training, seed_epochs=args.seed_epochs)
        base = dataclasses.replace(base, training=training)
    out = Path(args.out)
    wall = time.perf_counter()
    runs: dict[int, dict] = {}
    for seed in args.seeds:
        space = dataclasses.replace(base, seed_value=seed)
        runs[seed] = {}
        for name in ("growth", "scratch"):
            run_dir = out / f"seed{seed}" / name
            if args.analyse_only:
                study, seconds = open_study(run_dir), float("nan")
            else:
                study, seconds = search(space, args.trials, run_dir, name == "scratch")
            runs[seed][name] = summarize(study, seconds)
        runs[seed]["comparison"] = compare(runs[seed]["growth"], runs[seed]["scratch"])
    minutes = (time.perf_counter() - wall) / 60

    t = base.training
    print(
        f"\nspace {args.space}, {args.trials} trials per search, seeds {args.seeds}; epochs per "
        f"trial {t.epochs}, growth root {t.seed_epochs or t.epochs}, scratch root {t.epochs}\n"
    )
    header = (
        "seed  search   trials  completed  best acc  best trial  its params  lineage steps  "
        "search steps  steps to scratch's best  time (s)"
    )
    print(header)
    print("-" * len(header))
    ratios = []
    for seed, r in runs.items():
        c = r["comparison"]
        for name in ("growth", "scratch"):
            x = r[name]
            reach = c["growth_steps"] if name == "growth" else c["scratch_steps"]
            reach_s = "never" if reach is None else f"{reach:,}"
            print(
                f"{seed:>4}  {name:<8} {x['trials']:>6}  {x['completed']:>9}  {x['best']:.4f}  "
                f"{x['best_trial']:>10}  {x['best_params']:>10,}  {x['best_cum']:>13,}  "
                f"{x['total']:>12,}  {reach_s:>23}  {x['seconds']:>8.0f}"
            )
        ratio = c["ratio"]
        ratios.append(ratio)
        shown = "never reached" if ratio is None else f"{ratio:.2f}"
        print(f"      ratio (growth steps / scratch steps to the scratch best): {shown}")
    met = sum(r is not None and r <= 1 / 3 for r in ratios)
    reached = [r for r in ratios if r is not None]
    if reached:
        print(
            f"\nstep ratio: median {statistics.median(reached):.2f}, mean "
            f"{statistics.fmean(reached):.2f}, range {min(reached):.2f} to {max(reached):.2f} over "
            f"the {len(reached)} seeds where growth reached the scratch best; "
            f"target <= 0.33 met in {met}/{len(ratios)} seeds"
        )
    else:
        print(f"\ngrowth never reached the scratch search's best; target met in 0/{len(ratios)}")
    higher = sum(r["growth"]["best"] > r["scratch"]["best"] for r in runs.values())
    gaps = [r["growth"]["best"] - r["scratch"]["best"] for r in runs.values()]
    print(
        f"best accuracy of the growth search above the scratch search's in {higher}/{len(runs)} "
        f"seeds (difference: mean {statistics.fmean(gaps):+.4f}, range {min(gaps):+.4f} to "
        f"{max(gaps):+.4f})"
    )
    print(f"wall time {minutes:.1f} min")

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "space": args.space,
                "trials": args.trials,
                "seeds": args.seeds,
                "seed_epochs": t.seed_epochs,
                "epochs": t.epochs,
                "runs": runs,
            },
            indent=1,
        )
    )
    plot(runs, args)
    print(f"figure: {args.figure}\njson: {args.json}")


def plot(runs: dict[int, dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(5, len(runs))
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.2 * nrows), sharey=True, squeeze=False
    )
    for ax, (seed, r) in zip(axes.flat, runs.items()):
        for name, color in (("growth", "C0"), ("scratch", "C1")):
            x = r[name]
            ax.step(
                *zip(*x["curve"]),
                where="post",
                color=color,
                label=f"{name} (best {x['best']:.3f})",
            )
        ax.axhline(r["scratch"]["best"], color="0.6", ls=":", lw=1)
        ratio = r["comparison"]["ratio"]
        ax.set_title(f"seed {seed}: ratio " + ("never" if ratio is None else f"{ratio:.2f}"))
        ax.set_xlabel("training steps spent by the search")
        ax.legend(loc="lower right", fontsize=8)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("best val. accuracy so far")
    fig.suptitle(f"growth vs from-scratch search, {Path(args.space).stem}, {args.trials} trials")
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)


if __name__ == "__main__":
    main()
