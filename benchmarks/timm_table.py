"""One model per timm architecture module: widen ×1.5, ×2 and deepen with ``verify=False``.

    python -m benchmarks.timm_table                    # every module (hours on 2 cores)
    python -m benchmarks.timm_table --only resnet vit  # some modules (timm.models.<module>)
    python -m benchmarks.timm_table --resume           # skip models with a cached result
    python -m benchmarks.timm_table --table            # print the table of the cached results

Per module of ``timm.models`` the variant with the fewest parameters (counted on the meta
device) that builds; random init with constant tensors redrawn
(:func:`autogrow.testing.randomize_constant_tensors`), a batch of one at the input size of its
default pretrained cfg. Each growth runs with ``verify=False``; the outputs are then compared
by :mod:`autogrow.verify` itself (eval mode, the dtype's default tolerance). Outcomes:
``preserved``; ``refused`` (an AutogrowError: its class and first line, which names the op,
module and line); ``wrong`` (the growth returned a model that differs: max relative error, or
that does not run); ``crash`` (any other exception: a bug); ``timeout`` (the model's process
ran out of its time limit before this growth finished). Each model runs in its own
process with a time limit; its rows are cached as JSON under ``benchmarks/out/timm/``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).parent / "out" / "timm"
OPS = (("widen", 1.5), ("widen", 2.0), ("deepen", 1))
_SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "mini", "small", "lite", "s0")


def smallest_per_module(only: list[str] | None = None) -> dict[str, str]:
    """timm module name → its architecture with the fewest parameters (meta device), cached;
    ``only``: just these modules (the others' candidates are not built)."""
    import timm
    from timm.models import _registry

    cache = OUT / "sizes.json"
    sizes: dict[str, int | None] = json.loads(cache.read_text()) if cache.exists() else {}
    names = timm.list_models()
    by_module: dict[str, list[str]] = {}
    for name in names:
        by_module.setdefault(_registry._model_to_module.get(name, "?"), []).append(name)
    # building every variant, even on meta, takes half an hour on 2 cores: per module the six
    # names that look smallest are built (a size word first, then the shortest name)
    candidates = []
    for module, group in by_module.items():
        if only and module not in only:
            continue

        def rank(n: str) -> tuple[int, int, str]:
            hits = [i for i, w in enumerate(_SMALL) if w in n]
            return (min(hits) if hits else len(_SMALL), len(n), n)

        candidates += sorted(group, key=rank)[:6]
    for name in candidates:
        if name in sizes:
            continue
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False)
            sizes[name] = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - a variant that does not build is not a candidate
            sizes[name] = None
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(sizes))
    best: dict[str, tuple[int, str]] = {}
    for name, n in sizes.items():
        if n is None:
            continue
        module = _registry._model_to_module.get(name, "?")
        if only and module not in only:
            continue
        if module not in best or (n, name) < best[module]:
            best[module] = (n, name)
    # smallest first, so that a run cut short has covered as many modules as it could
    return {module: name for module, (_, name) in sorted(best.items(), key=lambda kv: kv[1])}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def run_model(module: str, name: str, done: Any = None) -> list[dict]:
    """The three rows of one model (in this process); ``done(rows)`` after each."""
    import timm

    import autogrow
    from autogrow.testing import randomize_constant_tensors
    from autogrow.verify import compare, run

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    randomize_constant_tensors(model, 0)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(1, *size)
    reference = run(model, (x,))
    rows = []
    for op, arg in OPS:
        row = {"module": module, "model": name, "op": f"{op} x{arg}" if op == "widen" else op}
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if op == "widen":
                    grown = autogrow.widen(model, arg, example_inputs=(x,), seed=0, verify=False)
                else:
                    grown = autogrow.deepen(model, example_inputs=(x,), verify=False)
            row["seconds"] = time.perf_counter() - start
        except autogrow.AutogrowError as e:
            row.update(
                outcome="refused", detail=_first_line(e), seconds=time.perf_counter() - start
            )
            rows.append(row)
            continue
        except Exception as e:  # noqa: BLE001 - a bug, reported as such
            row.update(outcome="crash", detail=_first_line(e), seconds=time.perf_counter() - start)
            rows.append(row)
            _report(done, rows)
            continue
        try:
            err = compare(run(grown, (x,)), reference).max_error
        except Exception as e:  # noqa: BLE001 - a returned model that does not run is wrong
            row.update(outcome="wrong", detail=f"does not run: {_first_line(e)}")
            rows.append(row)
            _report(done, rows)
            continue
        grew = sum(p.numel() for p in grown.parameters()) > sum(
            p.numel() for p in model.parameters()
        )
        ok = err <= autogrow.verify.default_tolerance(torch.float32)
        row.update(
            outcome="preserved" if ok else "wrong",
            detail=f"max rel err {err:.2g}" + ("" if grew else ", no new parameters"),
        )
        rows.append(row)
        _report(done, rows)
        del grown
    return rows


def _report(done: Any, rows: list[dict]) -> None:
    if done is not None:
        done(rows)


def _worker(module: str, name: str) -> None:
    torch.set_num_threads(1)
    path = OUT / f"{name}.partial.json"  # the rows so far, for a worker that runs out of time
    rows = run_model(module, name, lambda rows: path.write_text(json.dumps(rows, indent=1)))
    (OUT / f"{name}.json").write_text(json.dumps(rows, indent=1))
    path.unlink(missing_ok=True)


def _run_isolated(module: str, name: str, limit: float) -> list[dict]:
    path = OUT / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.timm_table", "--worker", module, name]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        failed = proc.returncode != 0
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
    except subprocess.TimeoutExpired:
        failed, tail = True, [f"over the {limit:.0f} s limit"]
    if failed or not path.exists():
        partial = OUT / f"{name}.partial.json"
        rows = json.loads(partial.read_text()) if partial.exists() else []
        done = {r["op"] for r in rows}
        seconds = time.perf_counter() - start - sum(r.get("seconds", 0) for r in rows)
        for op, arg in OPS:
            label = f"{op} x{arg}" if op == "widen" else op
            if label in done:
                continue
            outcome = "timeout" if "limit" in tail[0] else "crash"
            rows.append(
                {
                    "module": module,
                    "model": name,
                    "op": label,
                    "outcome": outcome,
                    "detail": f"worker failed: {tail[0][:300]}",
                    "seconds": seconds,
                }
            )
            seconds = 0.0
        path.write_text(json.dumps(rows, indent=1))
        partial.unlink(missing_ok=True)
    return json.loads(path.read_text())


def table(rows: list[dict]) -> str:
    """The markdown table and the summary percentages (details cut at 200 characters, paths
    into site-packages shortened)."""
    site_packages = os.path.dirname(os.path.dirname(torch.__file__)) + os.sep
    lines = [
        "| module | model | op | outcome | detail | s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        detail = r.get("detail", "").replace("|", "\\|").replace("\n", " ")
        detail = detail.replace(site_packages, "")[:200]
        lines.append(
            f"| {r['module']} | {r['model']} | {r['op']} | {r['outcome']} | {detail} | "
            f"{r.get('seconds', 0):.1f} |"
        )
    lines.append("")
    ops = sorted({r["op"] for r in rows})
    for op in [*ops, None]:
        sel = [r for r in rows if op is None or r["op"] == op]
        if not sel:
            continue
        kinds = ("preserved", "refused", "wrong", "crash", "timeout")
        counts = {k: sum(r["outcome"] == k for r in sel) for k in kinds}
        share = ", ".join(f"{k} {v} ({100 * v / len(sel):.0f}%)" for k, v in counts.items())
        lines.append(f"- {op or 'all'}: {len(sel)} runs: {share}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", help="timm module names (resnet, vit, ...)")
    parser.add_argument("--resume", action="store_true", help="skip models with cached rows")
    parser.add_argument("--table", action="store_true", help="only print the cached table")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.worker:
        _worker(*args.worker)
        return
    chosen = smallest_per_module(args.only)
    rows: list[dict] = []
    for module, name in chosen.items():
        path = OUT / f"{name}.json"
        if args.table or (args.resume and path.exists()):
            if path.exists():
                rows += json.loads(path.read_text())
            continue
        got = _run_isolated(module, name, args.limit)
        for r in got:
            detail = r.get("detail", "")[:80]
            print(f"{module:20s} {name:32s} {r['op']:10s} {r['outcome']:9s} {detail}", flush=True)
        rows += got
    print(table(rows))
    print(f"\ncommand: {' '.join(sys.argv)}; torch {torch.__version__}; cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
