"""The ``autogrow search`` and ``autogrow show`` commands (registered by ``autogrow.cli``).

Optuna is imported when a command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_commands(subparsers: Any) -> None:
    """Add ``search`` and ``show`` to an argparse ``subparsers`` object.

    Each command sets ``func``: call ``args.func(args)``, which returns an exit status.

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="autogrow")
    >>> add_commands(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["search", "space.py", "--trials", "3"])
    >>> args.trials, args.workers, args.func.__name__
    (3, 1, 'search_command')
    """
    p = subparsers.add_parser(
        "search",
        help="run or resume a growth search (Optuna) over a search-space file",
        description=(
            "Run a growth search: every trial grows a trained parent with widen/deepen and "
            "trains it briefly. Re-running the same command resumes the study."
        ),
    )
    p.add_argument("space", help="a search-space file, e.g. search_spaces/digits_mlp.py")
    p.add_argument(
        "--trials", type=int, default=20, help="the study's total number of trials (default 20)"
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument(
        "--storage",
        default=None,
        help="RDB URL for several machines (postgresql://user:pw@host/db); default: a journal "
        "file in the run directory",
    )
    p.add_argument("--study", default=None, help="study name (default: the space's name)")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="baseline: train each child from random initialisation (same budget)",
    )
    p.add_argument("--run-dir", default=None, help="default runs/<study>")
    p.add_argument("--heartbeat", type=int, default=30, help="RDB heartbeat seconds (30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=search_command)

    s = subparsers.add_parser(
        "show", help="summary table, best architecture and plots of a search's run directory"
    )
    s.add_argument("run_dir", help="the run directory, e.g. runs/digits_mlp")
    s.add_argument("--top", type=int, default=10, help="rows in the table (default 10)")
    s.set_defaults(func=show_command)


def search_command(args: argparse.Namespace) -> int:
    """Run ``autogrow search``; returns the exit status."""
    import optuna

    from .runner import run
    from .space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    try:
        run(
            space,
            args.trials,
            storage=args.storage,
            study_name=args.study,
            run_dir=args.run_dir,
            workers=args.workers,
            from_scratch=args.from_scratch,
            heartbeat=args.heartbeat,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            "interrupted: the running trials were queued again; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


def show_command(args: argparse.Namespace) -> int:
    """Run ``autogrow show``; returns the exit status."""
    import optuna

    from .report import report
    from .runner import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report(open_study(args.run_dir), args.run_dir, top=args.top)
    return 0
