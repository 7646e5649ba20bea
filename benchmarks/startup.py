"""How long ``autogrow --help`` and ``import autogrow`` take in a fresh interpreter.

    python -m benchmarks.startup             # 9 runs of each, from the repository root
    python -m benchmarks.startup --runs 21

Each measurement is the wall time of a new ``python`` subprocess (interpreter start-up
included), the median of ``--runs`` runs after one warm-up run, with the runs of the three
commands interleaved so that load from other processes falls on all alike:

* ``python -c pass``: the interpreter alone, the floor of the two below;
* ``python -m autogrow --help``: the ``autogrow`` command's help (the installed ``autogrow``
  script runs the same ``autogrow.cli:main``); it must not import torch;
* ``python -c "import autogrow"``: the package, with torch and the analysis engine deferred to
  the first use of ``autogrow.widen`` & co.;
* ``python -c "import autogrow; autogrow.widen"``: the same plus that first use (torch).

The target is 0.5 s for the first two (issue 10, point 8). Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "autogrow --help": ["-m", "autogrow", "--help"],
    "import autogrow": ["-c", "import autogrow"],
    "import autogrow; autogrow.widen": ["-c", "import autogrow; autogrow.widen"],
}


def wall_time(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=300
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each command (9)")
    args = parser.parse_args(argv)
    for command in COMMANDS.values():  # warm-up: file system caches, .pyc files
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"commit {commit or '?'}, {os.cpu_count()} CPUs, load average {load}")
    print(f"{'command':34} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs)")
    for name, values in times.items():
        med, lo, hi = statistics.median(values), min(values), max(values)
        print(f"{name:34} {med:7.3f}s {lo:7.3f}s {hi:7.3f}s")


if __name__ == "__main__":
    main()
