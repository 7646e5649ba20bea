"""The end of a search: a rich summary table, the best architecture, and PNG plots.

Plots (matplotlib, under the run directory): ``history.png`` (accuracy per trial and the best
so far), ``pareto.png`` (accuracy against parameters, each point numbered with its trial, the
Pareto front highlighted), ``lineage.png`` (the tree of parents and children, each edge
labelled with its growth operations), ``steps.png`` (two panels: each trial's accuracy against
its lineage's training steps; the best so far against the whole search's training steps).
"""

from __future__ import annotations

import json
import textwrap
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

    The ``growth from parent`` column lists the trial's operations, one per line
    (:func:`format_op`); :func:`plan_legend` says what they mean.

    >>> summary_table(optuna.create_study()).row_count
    0
    """
    from rich.table import Table
    from rich.text import Text

    # no outer border: the table fits 80 columns with two-operation plans of the digits MLP
    table = Table(title=f"study {study.study_name}: best trials", show_edge=False, pad_edge=False)
    rows = _top(study, top)
    plans = [format_plan(t.user_attrs.get("plan") or [], sep="\n") for t in rows]
    for col in ("trial", "accuracy", "params", "depth", "parent", GROWTH_COLUMN, "cum. steps"):
        table.add_column(col, justify="left" if col == GROWTH_COLUMN else "right")
    for t, plan in zip(rows, plans):
        a = t.user_attrs
        table.add_row(
            str(t.number),
            f"{a['accuracy']:.4f}",
            f"{a.get('params', 0):,}",
            str(a.get("depth", "")),
            "seed" if a.get("parent") is None else str(a["parent"]),
            Text(plan),  # not rich markup: module names may hold brackets
            f"{a.get('cumulative_steps', 0):,}",
        )
    return table


GROWTH_COLUMN = "growth from parent"


def _top(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    return sorted(_completed(study), key=rank_key)[:top]


def format_op(op: dict[str, Any], *, short: bool = False) -> str:
    """One growth operation in words, naming its site (a module of the seed) and its type.

    ``short``: without the module type (for the lineage plot's edge labels).

    >>> format_op({"op": "widen", "site": "fc1", "factor": 1.5, "module": "Linear(64→16)"})
    'widen fc1 (Linear) ×1.5'
    >>> format_op({"op": "deepen", "site": "4", "kind": "layer", "module": "ReLU"})
    'deepen after 4 (ReLU)'
    >>> format_op({"op": "deepen", "site": "layer2", "kind": "block", "module": "BasicBlock"})
    'deepen layer2 (+ BasicBlock)'
    >>> format_op({"op": "widen", "site": "fc1", "factor": 2.0, "module": "Linear"}, short=True)
    'widen fc1 ×2'
    >>> format_op({"op": "widen", "site": "fc1", "factor": 2.0, "symmetry": "paired"})
    'widen paired fc1 ×2'
    >>> format_op({"op": "stack", "site": None, "factor": 2, "kind": "stack"})
    'stack ×2'
    """
    if op["op"] == "stack":
        return f"stack ×{op['factor']:g}"
    site, module = op["site"], op.get("module")
    typ = None if short or not module else module.split("(")[0]  # "Linear(64→16)": "Linear"
    if op["op"] == "widen":
        where = f"{site} ({typ})" if typ else site
        paired = " paired" if op.get("symmetry") == "paired" else ""
        return f"widen{paired} {where} ×{op['factor']:g}"
    if op.get("kind") == "block":
        return f"deepen {site} (+ {typ})" if typ else f"deepen {site}"
    if op.get("kind") == "layer":
        return f"deepen after {site} ({typ})" if typ else f"deepen after {site}"
    return f"deepen {site}"  # a plan recorded before operations said where depth goes


def format_plan(plan: list[dict[str, Any]], *, sep: str = ", ", short: bool = False) -> str:
    """A short text of a growth plan: its operations (:func:`format_op`) joined by ``sep``.

    >>> format_plan([{"op": "widen", "site": "1", "factor": 1.5, "module": "Linear(64→16)"},
    ...              {"op": "deepen", "site": "4", "kind": "layer", "module": "ReLU"}])
    'widen 1 (Linear) ×1.5, deepen after 4 (ReLU)'
    """
    if not plan:
        return "(root: the seed)"
    return sep.join(format_op(p, short=short) for p in plan)


def plan_legend(plans: list[list[dict[str, Any]]]) -> str:
    """What the operations in ``plans`` mean, and which module of the seed each site names.

    Empty when no plan has an operation.

    >>> print(plan_legend([[{"op": "widen", "site": "1", "factor": 2.0,
    ...                      "module": "Linear(64→16)"}]]))
    growth from parent: sites are named as in the seed: 1 = Linear(64→16)
      widen M ×f: M's output units/channels times f (the layers reading them widen too)
    """
    ops = [op for plan in plans for op in plan]
    if not ops:
        return ""
    kinds = {
        ("paired" if op.get("symmetry") == "paired" else "widen")
        if op["op"] == "widen"
        else op.get("kind", "deepen")
        for op in ops
    }
    meaning = {
        "widen": "widen M ×f: M's output units/channels times f (the layers reading them widen "
        "too)",
        "paired": "widen paired M ×f: as widen, the copies' outgoing weights get +N/-N noise "
        "(still exact)",
        "stack": "stack ×k: every layer stack k times as deep, from copies of its trained "
        "layers (changes the function)",
        "layer": "deepen after M: a new layer after M, initialised to compute the identity",
        "block": "deepen S (+ B): a zeroed copy of stage S's last block B appended (an identity)",
        "deepen": "deepen M: new depth at M",
    }
    head = f"{GROWTH_COLUMN}: sites are named as in the seed"
    sites = site_list(plans)
    if sites:
        head += ": " + sites
    return "\n".join([head, *(f"  {meaning[k]}" for k in meaning if k in kinds)])


def site_list(plans: list[list[dict[str, Any]]]) -> str:
    """The sites that ``plans`` grow, each with its module in the seed, in name order.

    >>> site_list([[{"op": "deepen", "site": "10", "kind": "layer", "module": "ReLU"},
    ...             {"op": "widen", "site": "4", "factor": 2.0, "module": "Linear(8→8)"}]])
    '4 = Linear(8→8), 10 = ReLU'
    """
    modules = {op["site"]: op["module"] for plan in plans for op in plan if op.get("module")}
    return ", ".join(f"{k} = {modules[k]}" for k in sorted(modules, key=_natural))


def _natural(name: str) -> list[tuple[int, Any]]:
    """Sort key: ``"layer10"`` after ``"layer2"``, ``"10"`` after ``"4"``."""
    import re

    return [(0, int(x)) if x.isdigit() else (1, x) for x in re.split(r"(\d+)", name) if x]


def report(study: optuna.Study, run_dir: str | Path, *, top: int = 10, console: Any = None) -> None:
    """Print the summary table, the best architecture and the state counts; write the plots."""
    from rich.console import Console

    console = console or Console(soft_wrap=True)  # paths and commands stay copy-pasteable
    run_dir = Path(run_dir)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    console.print(summary_table(study, top))
    legend = plan_legend([t.user_attrs.get("plan") or [] for t in _top(study, top)])
    if legend:
        console.print(legend, highlight=False, markup=False)
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
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = []
    for name, fig in figures(study).items():
        run_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(run_dir / name, dpi=110)
        plt.close(fig)
        out.append(run_dir / name)
    return out


def figures(study: optuna.Study) -> dict[str, Any]:
    """The four plots as matplotlib figures, by file name (empty while no trial completed).

    The caller closes them (``matplotlib.pyplot.close``).
    """
    completed = _completed(study)
    if not completed:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, draw in zip(PLOTS, (_history, _pareto, _lineage, _steps)):
        fig = plt.figure(figsize=(7, 4.5))
        draw(fig, study, completed)
        fig.tight_layout()
        out[name] = fig
    return out


def _history(fig: Any, study: optuna.Study, completed: list) -> None:
    ax = fig.add_subplot()
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


def _pareto(fig: Any, study: optuna.Study, completed: list) -> None:
    from matplotlib.ticker import FuncFormatter

    ax = fig.add_subplot()
    pts = [(t.user_attrs.get("params", 0), t.user_attrs["accuracy"], t.number) for t in completed]
    front = sorted(p for p in pts if not any(_dominates(q, p) for q in pts))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.6, label="trial")
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C3", label="Pareto front")
    _number_points(ax, pts)
    sizes = [p[0] for p in pts if p[0] > 0]
    if sizes and max(sizes) > 20 * min(sizes):  # several decades: log scale
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set(
        xlabel="parameters",
        ylabel="validation accuracy",
        title="accuracy vs parameters (points numbered by trial)",
    )
    ax.legend(loc="lower right")


def _number_points(ax: Any, pts: list[tuple[float, float, int]]) -> None:
    """Write each point's trial number beside it; trials on the same spot share one label."""
    at: dict[tuple[float, float], list[int]] = {}
    for x, y, number in pts:
        at.setdefault((x, y), []).append(number)
    for (x, y), numbers in at.items():
        text = ",".join(str(n) for n in sorted(numbers))
        ax.annotate(text, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)


def _dominates(q: tuple, p: tuple) -> bool:
    return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])


def _lineage(fig: Any, study: optuna.Study, completed: list) -> None:
    import networkx as nx
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    g = nx.DiGraph()
    for t in completed:
        g.add_node(t.number, depth=t.user_attrs.get("depth", 0), acc=t.user_attrs["accuracy"])
    edge_labels = {}
    for t in completed:
        parent = t.user_attrs.get("parent")
        if parent is not None and parent in g:
            g.add_edge(parent, t.number)
            plan = t.user_attrs.get("plan") or []
            edge_labels[parent, t.number] = format_plan(plan, sep="\n", short=True)
    pos = _tree_layout(g)
    leaves = sum(1 for n in g if g.out_degree(n) == 0)
    rows = len({y for _, y in pos.values()})
    # about 1.5 in per leaf and 1 in per row leave room for the edge labels
    fig.set_size_inches(min(max(7.0, 1.5 * leaves + 2), 24.0), min(max(4.5, rows + 1.5), 16.0))
    ax = fig.add_subplot()
    accs = [g.nodes[n]["acc"] for n in g]
    norm, cmap = Normalize(min(accs), max(accs)), colormaps["viridis"]
    nodes = nx.draw_networkx_nodes(
        g, pos, ax=ax, node_color=accs, cmap=cmap, vmin=norm.vmin, vmax=norm.vmax, node_size=260
    )
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=8, edge_color="0.6")
    for n, (x, y) in pos.items():  # dark text on the light end of the colour map
        colour = "k" if norm(g.nodes[n]["acc"]) > 0.6 else "w"
        ax.text(x, y, str(n), ha="center", va="center", fontsize=7, color=colour)
    for (parent, child), text in edge_labels.items():  # nearer the child: siblings' apart
        (px, py), (cx, cy) = pos[parent], pos[child]
        ax.text(
            cx + 0.25 * (px - cx),
            cy + 0.25 * (py - cy),
            text,
            ha="center",
            va="center",
            fontsize=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "w", "ec": "none", "alpha": 0.85},
        )
    fig.colorbar(nodes, ax=ax, label="validation accuracy")
    sites = site_list([t.user_attrs.get("plan") or [] for t in completed])
    if sites:
        caption = textwrap.fill(f"sites, named as in the seed: {sites}", 110)
        ax.text(0.5, -0.02, caption, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    ax.set_title("lineage: trials (colour = accuracy), edges = growth operations")
    ax.axis("off")


def _tree_layout(g: Any) -> dict[int, tuple[float, float]]:
    """Rows by growth depth (the seed on top); children side by side under their parent."""
    x_of: dict[int, float] = {}
    slot = 0

    def place(n: int) -> float:
        nonlocal slot
        kids = sorted(g.successors(n))
        if not kids:
            x_of[n], slot = float(slot), slot + 1
        else:
            xs = [place(k) for k in kids]
            x_of[n] = (xs[0] + xs[-1]) / 2
        return x_of[n]

    for n in sorted(n for n in g if g.in_degree(n) == 0):
        place(n)
    return {n: (x_of[n], -float(g.nodes[n]["depth"])) for n in g}


def _steps(fig: Any, study: optuna.Study, completed: list) -> None:
    fig.set_size_inches(11, 4.5)
    left, right = fig.subplots(1, 2, sharey=True)
    xs = [t.user_attrs.get("cumulative_steps", 0) for t in completed]
    ys = [t.user_attrs["accuracy"] for t in completed]
    left.scatter(xs, ys, s=18)
    _number_points(left, [(x, y, t.number) for x, y, t in zip(xs, ys, completed)])
    left.set(
        xlabel="training steps behind the model (its own + its ancestors')",
        ylabel="validation accuracy",
        title="each trial (numbered) vs its lineage's training",
    )
    curve = search_curve(study)
    if curve:
        right.step(*zip(*curve), where="post", color="C3")
    right.set(
        xlabel="training steps spent by the whole search so far",
        ylabel="best validation accuracy so far",
        title="the search: best so far vs all its training",
    )
    right.yaxis.set_tick_params(labelleft=True)
