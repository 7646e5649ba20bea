"""The end of a search: a rich summary table, the best architecture, and PNG plots.

Plots (matplotlib, under the run directory): ``history.png`` (accuracy per trial and the best
so far), ``pareto.png`` (accuracy against parameters, the Pareto front highlighted),
``lineage.png`` (the tree of parents and children, networkx), ``steps.png`` (accuracy
against cumulative training steps, and the best so far against the search's total steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .objective import rank_key

PLOTS = ("history.png", "pareto.png", "lineage.png", "steps.png")


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "accuracy" in t.user_attrs
    ]


def _finish_order(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return sorted(done, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))


def search_curve(study: optuna.Study, *, children_only: bool = False) -> list[tuple[int, float]]:
    """(training steps spent by the whole search so far, best accuracy so far), per trial.

    Trials in the order they finished; every finished trial's ``train_steps`` count (pruned
    and failed ones too), only completed trials' accuracies (with ``children_only``, only
    those of trials that grew a parent, not the roots).

    >>> search_curve(optuna.create_study())
    []
    """
    total, best, out = 0, float("-inf"), []
    for t in _finish_order(study):
        total += int(t.user_attrs.get("train_steps", 0))
        if children_only and t.user_attrs.get("parent") is None:
            pass
        elif t.state == TrialState.COMPLETE and "accuracy" in t.user_attrs:
            best = max(best, float(t.user_attrs["accuracy"]))
        if best > float("-inf"):
            out.append((total, best))
    return out


def summary_table(study: optuna.Study, top: int = 10) -> Any:
    """A ``rich.table.Table`` of the ``top`` most accurate completed trials.

    >>> summary_table(optuna.create_study()).row_count
    0
    """
    from rich.table import Table

    table = Table(title=f"study {study.study_name}: best trials")
    for col in ("trial", "accuracy", "params", "depth", "parent", "growth plan", "cum. steps"):
        table.add_column(col, justify="right" if col not in ("growth plan",) else "left")
    for t in sorted(_completed(study), key=rank_key)[:top]:
        a = t.user_attrs
        table.add_row(
            str(t.number),
            f"{a['accuracy']:.4f}",
            f"{a.get('params', 0):,}",
            str(a.get("depth", "")),
            "seed" if a.get("parent") is None else str(a["parent"]),
            format_plan(a.get("plan") or []),
            f"{a.get('cumulative_steps', 0):,}",
        )
    return table


def format_plan(plan: list[dict[str, Any]]) -> str:
    """A short text of a growth plan.

    >>> format_plan([{"op": "widen", "site": "1", "factor": 1.5}, {"op": "deepen", "site": "2"}])
    'widen 1 x1.5, deepen 2'
    """
    if not plan:
        return "(root: the seed)"
    return ", ".join(
        f"widen {p['site']} x{p['factor']:g}" if p["op"] == "widen" else f"deepen {p['site']}"
        for p in plan
    )


def report(study: optuna.Study, run_dir: str | Path, *, top: int = 10, console: Any = None) -> None:
    """Print the summary table, the best architecture and the state counts; write the plots."""
    from rich.console import Console

    console = console or Console(soft_wrap=True)  # paths and commands stay copy-pasteable
    run_dir = Path(run_dir)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    console.print(summary_table(study, top))
    console.print("trials: " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())))
    completed = _completed(study)
    if completed:
        best = min(completed, key=rank_key)
        a = best.user_attrs
        console.print(
            f"best architecture (trial {best.number}, accuracy {a['accuracy']:.4f}, "
            f"{a.get('params', 0):,} parameters):\n  {a.get('architecture', '?')}"
        )
        console.print(
            f"checkpoint: artifact {a.get('checkpoint')} in {run_dir / 'artifacts'} "
            "(autogrow.search.load_checkpoint)"
        )
    paths = write_plots(study, run_dir)
    if paths:
        console.print("plots: " + ", ".join(str(p) for p in paths))
    config = _read_config(run_dir)
    storage = (config or {}).get("storage") or f"{run_dir / 'journal.log'}"
    console.print(
        f"dashboard: pip install optuna-dashboard; optuna-dashboard {storage} "
        f"--artifact-dir {run_dir / 'artifacts'}"
    )


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    f = Path(run_dir) / "run.json"
    return json.loads(f.read_text()) if f.is_file() else None


def write_plots(study: optuna.Study, run_dir: str | Path) -> list[Path]:
    """Write the four PNGs under ``run_dir`` (nothing while no trial has completed)."""
    completed = _completed(study)
    if not completed:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, draw in zip(PLOTS, (_history, _pareto, _lineage, _steps)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(ax, study, completed)
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=110)
        plt.close(fig)
        out.append(run_dir / name)
    return out


def _history(ax: Any, study: optuna.Study, completed: list) -> None:
    xs = [t.number for t in completed]
    ys = [t.user_attrs["accuracy"] for t in completed]
    ax.scatter(xs, ys, s=18, label="trial")
    best, bx, by = float("-inf"), [], []
    for t in sorted(completed, key=lambda t: t.number):
        best = max(best, t.user_attrs["accuracy"])
        bx.append(t.number)
        by.append(best)
    ax.step(bx, by, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="validation accuracy", title="optimisation history")
    ax.legend(loc="lower right")


def _pareto(ax: Any, study: optuna.Study, completed: list) -> None:
    pts = [(t.user_attrs.get("params", 0), t.user_attrs["accuracy"], t.number) for t in completed]
    front = [p for p in pts if not any(_dominates(q, p) for q in pts)]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.6, label="trial")
    front.sort()
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C3", label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="validation accuracy", title="accuracy vs parameters")
    ax.legend(loc="lower right")


def _dominates(q: tuple, p: tuple) -> bool:
    return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])


def _lineage(ax: Any, study: optuna.Study, completed: list) -> None:
    import networkx as nx

    g = nx.DiGraph()
    for t in completed:
        g.add_node(t.number, depth=t.user_attrs.get("depth", 0), acc=t.user_attrs["accuracy"])
    for t in completed:
        parent = t.user_attrs.get("parent")
        if parent is not None and parent in g:
            g.add_edge(parent, t.number)
    pos = nx.multipartite_layout(g, subset_key="depth", align="horizontal")
    pos = {n: (x, -y) for n, (x, y) in pos.items()}  # roots on top
    accs = [g.nodes[n]["acc"] for n in g]
    nodes = nx.draw_networkx_nodes(g, pos, ax=ax, node_color=accs, cmap="viridis", node_size=220)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=8, edge_color="0.6")
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7, font_color="w")
    ax.figure.colorbar(nodes, ax=ax, label="validation accuracy")
    ax.set_title("lineage (trial numbers; rows = growth depth)")
    ax.axis("off")


def _steps(ax: Any, study: optuna.Study, completed: list) -> None:
    xs = [t.user_attrs.get("cumulative_steps", 0) for t in completed]
    ys = [t.user_attrs["accuracy"] for t in completed]
    ax.scatter(xs, ys, s=18, label="trial (its lineage's cumulative steps)")
    curve = search_curve(study)
    if curve:
        ax.step(*zip(*curve), where="post", color="C3", label="best so far (search's total steps)")
    ax.set(xlabel="training steps", ylabel="validation accuracy", title="accuracy vs training")
    ax.legend(loc="lower right")
