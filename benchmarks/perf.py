"""How long widen takes, against the cost of the copies alone and against Torch-Pruning.

    python -m benchmarks.perf                    # resnet50, vit_b_16, convnext_base; 5 repeats
    python -m benchmarks.perf resnet50 --repeats 9
    python -m benchmarks.perf --factor 1.5 --no-torch-pruning

For each model (torchvision, random init, eval mode, input 1x3x224x224) it times, in one process,
after one warm-up round and as the median of ``--repeats`` rounds (the measurements of a round are
interleaved, so that load from other processes falls on all columns alike):

* widen total: ``autogrow.widen(model, factor, verify=False, example_inputs=(x,), seed=0)``.
* the stages of that call, by running widen's internal steps in sequence:
  trace (``autogrow.tracing.trace``: fx capture plus one eval-mode run for shapes),
  infer (``autogrow.graph.build.build`` and ``WidthGraph``: the width-group inference, with the
  torch.export retry that ``analyze_traced`` makes when fx blocked ops),
  plan+map (``plan_widths`` and one ``sample_map`` per group),
  tensors (``grown_tensors``: index_select along the grown axes, share scaling of reduced axes),
  copy (``attribute_updates`` and the deep copy of the model around the new tensors).
* floor: the allocation and index copies of the new tensors alone. The index maps come from a
  real run (``term_map`` of every grown axis, computed outside the timing); the timed part is,
  for every tensor widen grows, ``old.index_select(d, index)`` for each grown axis ``d`` in
  widen's order, and nothing else (no share scaling, no map construction, no model copy).
* Torch-Pruning build: ``tp.DependencyGraph().build_dependency(model, example_inputs=x)`` on the
  same model and input (benchmark-only dependency: ``pip install -e .[bench]``). If it cannot be
  imported the column reads "n/a" and the rest still runs.

On a small machine shared with other busy processes, torch's default of one thread per core can
make every multi-threaded kernel (convolutions, large copies) wait on descheduled threads, which
inflates and scatters all timings; ``--threads 1`` gives steadier numbers. The thread count applies
to every column alike.

Targets: widen total <= 3x the floor; trace + group inference faster than Torch-Pruning's build.
This is a benchmark, not a test: nothing fails when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision

import autogrow
from autogrow.graph import WidthGraph, _free_axes
from autogrow.graph.build import build
from autogrow.rules import default_registry
from autogrow.tracing import prepare_inputs, trace
from autogrow.tracing.trace import _meta_run, _MetaRecorder, _Tracer, eval_mode, trace_export
from autogrow.transforms.mapping import sample_map, term_map
from autogrow.transforms.plan import plan_widths
from autogrow.transforms.widen import _apply_copy, attribute_updates, grown_tensors

try:
    import torch_pruning as tp
except Exception as e:  # noqa: BLE001 - any import failure only disables the column
    tp = None
    TP_IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    TP_IMPORT_ERROR = ""

DEFAULT_MODELS = ["resnet50", "vit_b_16", "convnext_base"]
STAGES = ["trace", "infer", "plan+map", "tensors", "copy"]
SEED = 0


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def widen_total(
    model: torch.nn.Module, x: torch.Tensor, factor: float
) -> tuple[float, torch.nn.Module]:
    return _timed(
        lambda: autogrow.widen(model, factor, verify=False, example_inputs=(x,), seed=SEED)
    )


def widen_stages(model: torch.nn.Module, x: torch.Tensor, factor: float) -> dict[str, Any]:
    """widen(verify=False) step by step, as autogrow/transforms/widen.py runs it."""
    registry = default_registry
    t0 = time.perf_counter()
    inputs = prepare_inputs(model, (x,))
    traced = trace(model, inputs, registry.leaf_types(), reference=False)  # as verify=False
    t1 = time.perf_counter()
    analysis = build(traced, registry)
    fallback = False
    if traced.kind == "fx" and analysis.blocked:  # the retry analyze_traced makes
        fallback = True
        try:
            alternative = build(trace_export(model, inputs), registry)
        except Exception:  # noqa: BLE001
            alternative = None
        if alternative is not None and _free_axes(alternative) > _free_axes(analysis):
            alternative.traced.reference_output = traced.reference_output
            analysis = alternative
    graph = WidthGraph(analysis)
    t2 = time.perf_counter()
    widths = plan_widths(graph, factor)
    generator = torch.Generator().manual_seed(SEED)
    maps = {
        gid: sample_map(
            graph.by_id(gid).width,
            n,
            uniform=graph.by_id(gid).uniform is not None,
            symmetry="split",
            generator=generator,
        )
        for gid, n in sorted(widths.items())
    }
    t3 = time.perf_counter()
    tensors = grown_tensors(graph.analysis, maps)
    t4 = time.perf_counter()
    attrs = attribute_updates(graph, widths)
    result, _ = _apply_copy(model, tensors, attrs)
    t5 = time.perf_counter()
    times = dict(zip(STAGES, [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4], strict=True))
    return {
        "times": times,
        "graph": graph,
        "maps": maps,
        "tensors": tensors,
        "result": result,
        "fallback": fallback,
        "kind": traced.kind,
    }


def trace_split(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The two halves of the fx trace (as trace_fx runs them without a reference output: shapes
    from meta tensors), and a plain forward for scale."""
    t0 = time.perf_counter()
    graph = _Tracer(default_registry.leaf_types()).trace(model)
    gm = torch.fx.GraphModule(model, graph)
    t1 = time.perf_counter()
    with eval_mode(model), torch.no_grad():
        if _meta_run(gm, (x,)) is None:
            _MetaRecorder(gm).run(x)
    t2 = time.perf_counter()
    with torch.no_grad():
        model(x)
    t3 = time.perf_counter()
    return {"fx capture": t1 - t0, "shape run": t2 - t1, "forward": t3 - t2}


def floor_plan(
    graph: WidthGraph, maps: dict
) -> list[tuple[str, torch.Tensor, list[tuple[int, torch.Tensor]]]]:
    """Every tensor widen grows: (name, old tensor, [(axis, source index), ...]), widen's order."""
    analysis, store = graph.analysis, graph.store
    plan = []
    for name, info in analysis.params.items():
        t = info.tensor.detach()
        steps = []
        for d, term in enumerate(info.terms):
            if not any(a.id in maps for a in store.leaf_atoms(term)):
                continue
            steps.append((d, term_map(store, term, maps).source.to(t.device)))
        if steps:
            plan.append((name, t, steps))
    return plan


def floor_copy(plan: list) -> dict[str, torch.Tensor]:
    """Allocate and index-copy the new tensors: the same index_select calls widen makes, only."""
    out = {}
    for name, t, steps in plan:
        for d, index in steps:
            t = t.index_select(d, index)
        out[name] = t
    return out


def tp_build(model: torch.nn.Module, x: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unwrapped parameters detected" on every call
        seconds, _ = _timed(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x))
    return seconds


def bench_model(name: str, factor: float, repeats: int, use_tp: bool) -> dict[str, Any]:
    torch.manual_seed(SEED)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    params_before = sum(p.numel() for p in model.parameters())

    # One real run to get the maps and the tensors to copy; check the floor grows the same shapes.
    staged = widen_stages(model, x, factor)
    plan = floor_plan(staged["graph"], staged["maps"])
    floor_out = floor_copy(plan)
    grown = staged["tensors"]
    assert floor_out.keys() == grown.keys(), "floor and widen grow different tensors"
    for k in grown:
        assert floor_out[k].shape == grown[k].shape, (
            f"{k}: {floor_out[k].shape} vs {grown[k].shape}"
        )
    copied_bytes = sum(t.numel() * t.element_size() for t in grown.values())
    info = {
        "fallback": staged["fallback"],
        "kind": staged["kind"],
        "grown_tensors": len(grown),
        "copied_bytes": copied_bytes,
    }
    del staged, floor_out, grown
    gc.collect()

    extra = ["fx capture", "shape run", "forward"]
    samples: dict[str, list[float]] = {
        k: [] for k in ["total", "floor", "tp", "trace+infer", *STAGES, *extra]
    }
    params_after = None
    for r in range(repeats + 1):  # round 0 is the warm-up
        seconds, wide = widen_total(model, x, factor)
        params_after = sum(p.numel() for p in wide.parameters())
        del wide
        gc.collect()
        stage = widen_stages(model, x, factor)["times"]
        gc.collect()
        floor_s, out = _timed(lambda: floor_copy(plan))
        del out
        gc.collect()
        tp_s = tp_build(model, x) if use_tp else float("nan")
        gc.collect()
        split = trace_split(model, x)
        if r == 0:
            continue
        samples["total"].append(seconds)
        samples["floor"].append(floor_s)
        samples["tp"].append(tp_s)
        samples["trace+infer"].append(stage["trace"] + stage["infer"])
        for k in STAGES:
            samples[k].append(stage[k])
        for k in extra:
            samples[k].append(split[k])
    med = {k: statistics.median(v) for k, v in samples.items()}
    spread = {k: (min(v), max(v)) for k, v in samples.items()}
    return {
        "model": name,
        "params": params_before,
        "params_after": params_after,
        "median": med,
        "spread": spread,
        **info,
    }


def _autogrow_source() -> str:
    """Where autogrow was imported from, and its git commit (with '+dirty' for local edits)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(autogrow.__file__)))

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", "-C", root, *cmd], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "autogrow")
    except (OSError, subprocess.CalledProcessError):
        return f"autogrow from {root} (not a git checkout)"
    return f"autogrow from {root} at commit {commit}{'+dirty' if dirty else ''}"


def _tp_version() -> str:
    if tp is None:
        return "not installed"
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return getattr(tp, "__version__", "?")


def _fmt_s(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def _fmt_ratio(a: float, b: float, digits: int = 2) -> str:
    return "n/a" if a != a or b != b or b == 0 else f"{a / b:.{digits}f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "models", nargs="*", default=DEFAULT_MODELS, help=f"default: {' '.join(DEFAULT_MODELS)}"
    )
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument(
        "--repeats", "-n", type=int, default=5, help="timed rounds after the warm-up (median)"
    )
    parser.add_argument(
        "--no-torch-pruning", action="store_true", help="skip the Torch-Pruning column"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for every column (default: leave torch's default)",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    use_tp = tp is not None and not args.no_torch_pruning
    load_before = os.getloadavg()
    print(f"autogrow perf benchmark  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, torch-pruning {_tp_version()}"
    )
    print(_autogrow_source())
    print(
        f"CPU: {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}"
        f"{'' if args.threads is not None else ' (torch default)'}; "
        f"load average at start {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    print("NOTE: a shared machine; other processes may be running, so absolute times are noisy.")
    print(
        f"factor {args.factor}, input 1x3x224x224, random init, eval mode, CPU; "
        f"median of {args.repeats} rounds after 1 warm-up"
    )
    if tp is None:
        print(
            f"Torch-Pruning unavailable ({TP_IMPORT_ERROR}); its column reads n/a. "
            "Install it with: pip install -e .[bench]"
        )
    print()

    rows = []
    for name in args.models:
        print(f"... {name}", flush=True)
        rows.append(bench_model(name, args.factor, args.repeats, use_tp))

    cols = [
        "model",
        "params before",
        "params after",
        "widen total (s)",
        "trace+infer (s)",
        "floor (s)",
        "total/floor",
        "TP build (s)",
        "(trace+infer)/TP",
    ]
    table = []
    for r in rows:
        m = r["median"]
        table.append(
            [
                r["model"],
                f"{r['params']:,}",
                f"{r['params_after']:,}",
                _fmt_s(m["total"]),
                _fmt_s(m["trace+infer"]),
                _fmt_s(m["floor"]),
                _fmt_ratio(m["total"], m["floor"]),
                _fmt_s(m["tp"]),
                _fmt_ratio(m["trace+infer"], m["tp"]),
            ]
        )
    _print_table(cols, table)

    print("\nStage breakdown of widen (median seconds per stage; share of the stage sum):")
    cols2 = ["model", *STAGES, "sum", "widen total", "grown tensors", "MB copied"]
    table2 = []
    for r in rows:
        m = r["median"]
        total = sum(m[k] for k in STAGES)
        table2.append(
            [
                r["model"],
                *[f"{m[k]:.3f} ({100 * m[k] / total:.0f}%)" for k in STAGES],
                f"{total:.3f}",
                f"{m['total']:.3f}",
                str(r["grown_tensors"]),
                f"{r['copied_bytes'] / 2**20:.0f}",
            ]
        )
    _print_table(cols2, table2)

    print("\nThe trace stage split (fx symbolic trace + GraphModule; eval-mode Interpreter run")
    print("recording shapes), next to a plain no_grad forward of the model, median seconds:")
    cols3 = ["model", "fx capture", "shape run", "plain forward", "TP build"]
    _print_table(
        cols3,
        [
            [
                r["model"],
                *(f"{r['median'][k]:.3f}" for k in ["fx capture", "shape run", "forward"]),
                _fmt_s(r["median"]["tp"]),
            ]
            for r in rows
        ],
    )

    print("\nSpread (min-max over the rounds):")
    for r in rows:
        s = r["spread"]
        parts = [
            f"{k} {s[k][0]:.3f}-{s[k][1]:.3f}" if s[k][0] == s[k][0] else f"{k} n/a"
            for k in ["total", "trace+infer", "floor", "tp"]
        ]
        print(f"  {r['model']}: " + ", ".join(parts))
    for r in rows:
        if r["fallback"] or r["kind"] != "fx":
            print(f"  {r['model']}: traced with {r['kind']}; export retry: {r['fallback']}")

    print("\nTargets: widen total <= 3x floor; trace+infer < Torch-Pruning build")
    for r in rows:
        m = r["median"]
        a = m["total"] <= 3 * m["floor"]
        b = "n/a" if m["tp"] != m["tp"] else ("met" if m["trace+infer"] < m["tp"] else "MISSED")
        print(
            f"  {r['model']}: total/floor {_fmt_ratio(m['total'], m['floor'], 3)} -> "
            f"{'met' if a else 'MISSED'}; "
            f"(trace+infer)/TP {_fmt_ratio(m['trace+infer'], m['tp'], 3)} -> {b}"
        )
    load_after = os.getloadavg()
    print(f"\nload average at end {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


def _print_table(cols: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(
            "| "
            + " | ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
            + " |"
        )


if __name__ == "__main__":
    main()
