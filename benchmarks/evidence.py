"""Regenerate every table and plot of docs/evidence.md: ``python -m benchmarks.evidence``.

Runs, from the repository root (in the dev venv):

1. ``benchmarks.net2net_mnist``: the Keras port's Net2Net experiment on MNIST-5k;
2. ``benchmarks.tiny_resnet``: grown students vs a wide model trained from scratch;
3. ``benchmarks.symmetry``: ``symmetry="none"`` vs ``"split"`` vs ``noise``;
4. ``benchmarks.lm_growth``: a byte-level Llama grown by four operators vs LR-tuned scratch, in
   FLOPs, and the LR recipes after growth;
5. ``benchmarks.vision_growth``: the same accounting for a digits MLP and a tiny ResNet;

writes the figures to ``docs/figures/evidence_*.png`` and replaces the generated blocks of
``docs/evidence.md`` (between ``<!-- evidence:NAME -->`` and ``<!-- /evidence:NAME -->``) with
the tables exactly as printed, plus the seeds, the commit, the machine and the wall time.
``--no-docs`` leaves docs/evidence.md alone; ``--only NAME ...`` runs some parts.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import lm_growth, net2net_mnist, symmetry, tiny_resnet, vision_growth

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "evidence.md"
PARTS = ("net2net_mnist", "tiny_resnet", "symmetry", "lm_growth", "vision_growth")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "autogrow", "benchmarks"],
                               cwd=ROOT, text=True, capture_output=True, check=True)  # fmt: skip
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _stamp(args: argparse.Namespace, seeds: list[int], seconds: float, command: str) -> str:
    commit = args.commit  # taken when the run started
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"*Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC at commit {commit} with "
        f"`{command}`: seeds {seeds}, {seconds / 60:.1f} min wall time on "
        f"{os.cpu_count()} CPU cores (torch threads: {torch.get_num_threads()}, load average "
        f"{load:.1f} at the end), torch {torch.__version__}, "
        f"Python {platform.python_version()}.*"
    )


def net2net_block(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    out = net2net_mnist.main(["--seeds", *map(str, args.seeds)])
    results, evals = out["results"], out["evals_per_epoch"]
    cmd = f"python -m benchmarks.net2net_mnist --seeds {' '.join(map(str, args.seeds))}"
    return "\n\n".join([
        _stamp(args, args.seeds, time.perf_counter() - t0, cmd),
        "Validation loss (mean ± sample standard deviation over seeds) before training and "
        "after each epoch; final validation accuracy; the Keras port's numbers (full MNIST):",
        net2net_mnist.table(results, evals),
        "Starting validation loss of each student next to the teacher's final one, per seed:",
        net2net_mnist.start_check(results),
        "\n".join(f"- {line}" for line in net2net_mnist.checks(results, evals)),
        "![Net2Net MNIST-5k curves](figures/evidence_net2net_mnist.png)",
    ])  # fmt: skip


def tiny_resnet_block(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    out = tiny_resnet.main(["--seeds", *map(str, args.seeds)])
    cmd = f"python -m benchmarks.tiny_resnet --seeds {' '.join(map(str, args.seeds))}"
    ratios = out["ratios"]
    if ratios:
        mu, sd = net2net_mnist.mean_sd(ratios)
        summary = (f"**Net2Wider step ratio: {mu:.3f} ± {sd:.3f}** (steps to the scratch model's "
                   f"final accuracy / scratch's steps; {len(ratios)} of {len(args.seeds)} seeds "
                   "reached it; target ≤ 0.2).")  # fmt: skip
    else:
        summary = "**Net2Wider did not reach the scratch model's final accuracy in any seed.**"
    return "\n\n".join([
        _stamp(args, args.seeds, time.perf_counter() - t0, cmd),
        out["table"],
        summary,
        "![TinyResNet grown vs scratch](figures/evidence_tiny_resnet.png)",
    ])  # fmt: skip


def symmetry_block(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    seeds = args.seeds[: args.symmetry_seeds]
    out = symmetry.main(["--seeds", *map(str, seeds)])
    cmd = f"python -m benchmarks.symmetry --seeds {' '.join(map(str, seeds))}"
    return "\n\n".join([
        _stamp(args, seeds, time.perf_counter() - t0, cmd),
        out["table"],
        "![Replica divergence](figures/evidence_symmetry.png)",
    ])  # fmt: skip


def lm_growth_block(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    seeds = " ".join(map(str, args.seeds))
    if args.lm_saved is not None:  # the tables of a finished (or interrupted) run, no training
        out = lm_growth.main(["--report", str(args.lm_saved)])
        cmd = f"python -m benchmarks.lm_growth --report {args.lm_saved}"
    else:
        out = lm_growth.main(["--seeds", *seeds.split(), "--jobs", str(args.jobs)])
        cmd = f"python -m benchmarks.lm_growth --seeds {seeds} --jobs {args.jobs}"
    b = out["budget"]
    return "\n\n".join([
        _stamp(args, args.seeds, time.perf_counter() - t0, cmd),
        f"Growth at step {b.grow_at} of {b.steps}; peak learning rates {list(b.lr_grid)}. "
        "Final validation loss (nats/byte, mean ± sd over seeds) of every arm at every peak; "
        "in bold the one each arm keeps:",
        out["tables"]["grid"],
        "Each operator (LR recipe `keep`) at its chosen peak against the matching scratch "
        "model at its own:",
        out["tables"]["operators"],
        f"LR recipes after growth, all on {lm_growth.RECIPE_OPERATOR}, each at its chosen peak:",
        out["tables"]["recipes"],
        out["tables"]["findings"],
        "![Byte-level Llama: grown vs scratch against FLOPs](figures/lm_growth.png)",
    ])  # fmt: skip


def vision_growth_block(args: argparse.Namespace) -> str:
    t0 = time.perf_counter()
    seeds = " ".join(map(str, args.seeds))
    if args.vision_saved is not None:  # the tables of a finished run, no training
        out = vision_growth.main(["--report", str(args.vision_saved)])
        cmd = f"python -m benchmarks.vision_growth --report {args.vision_saved}"
    else:
        out = vision_growth.main(["--seeds", *seeds.split(), "--jobs", str(args.jobs)])
        cmd = f"python -m benchmarks.vision_growth --seeds {seeds} --jobs {args.jobs}"
    parts = [_stamp(args, args.seeds, time.perf_counter() - t0, cmd)]
    for name, res in out.items():
        b = res["budget"]
        parts.append(f"**{name}** (growth at step {int(b['steps'] * b['grow_fraction'])} of "
                     f"{b['steps']}; peak learning rates {list(b['lr_grid'])}):")  # fmt: skip
        parts.append(res["table"])
    return "\n\n".join(parts)


BLOCKS = {
    "net2net_mnist": net2net_block,
    "tiny_resnet": tiny_resnet_block,
    "symmetry": symmetry_block,
    "lm_growth": lm_growth_block,
    "vision_growth": vision_growth_block,
}


def replace_block(page: str, name: str, body: str) -> str:
    """Replace the text between the ``evidence:name`` markers of ``page`` with ``body``.

    >>> replace_block("a\\n<!-- evidence:x -->\\nold\\n<!-- /evidence:x -->\\nb", "x", "new")
    'a\\n<!-- evidence:x -->\\nnew\\n<!-- /evidence:x -->\\nb'
    """
    pattern = re.compile(rf"(<!-- evidence:{name} -->\n).*?(\n<!-- /evidence:{name} -->)", re.S)
    if not pattern.search(page):
        raise SystemExit(f"{PAGE} has no <!-- evidence:{name} --> ... <!-- /evidence:{name} -->")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), page)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--symmetry-seeds", type=int, default=None,
                        help="how many of --seeds the symmetry study uses (all)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/evidence.md")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--lm-saved", type=Path, default=None,
                        help="lm_growth: report this saved JSON instead of training")  # fmt: skip
    parser.add_argument("--vision-saved", type=Path, default=None,
                        help="vision_growth: report this saved JSON, no training")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes of lm_growth and vision_growth")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.commit = _commit()
    t0 = time.perf_counter()
    for name in args.only:
        body = BLOCKS[name](args)
        if not args.no_docs:  # after each part, so a later failure keeps the earlier tables
            PAGE.write_text(replace_block(PAGE.read_text(), name, body))
            print(f"docs/evidence.md: {name} updated", flush=True)
    print(f"\nevidence: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
