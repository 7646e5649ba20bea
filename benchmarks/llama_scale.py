"""Scale: widen a Llama-style model x2 to more than 1B parameters on a CPU machine; peak memory.

``python -m benchmarks.llama_scale [--size 0.3b|1.1b] [--dtype float32 bfloat16]
[--verify on off]`` (from the repository root, dev venv) runs each combination in a fresh
subprocess and prints a table of parameters, seconds and peak resident memory relative to the
old plus the new model's size; the JSON goes to ``benchmarks/out/llama_scale_<size>.json``.

The model: ``LlamaForCausalLM`` from a config (random initialisation, no weights), 4 key/value
heads (grouped-query attention), head size 64, RoPE, vocabulary 32000, untied embeddings.
``--size 0.3b`` (default): hidden size 1024, 20 layers, 16 query heads, MLP 2816: 0.29B
parameters; ``widen`` by 2.0 doubles hidden size, heads (32 query, 8 key/value; head size kept)
and MLP: 1.03B. ``--size 1.1b``: TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 query
heads, MLP 5632): 1.10B -> 4.2B, which on a 24 GB machine fits in bfloat16 only
(``--dtype bfloat16 --verify off``).

Example inputs: batch 1, 8 tokens. ``--verify on`` is widen's default (the grown model's logits
are compared with the original's to 1e-4, which costs one forward pass of each); in bfloat16
that comparison cannot hold (bfloat16 rounding differs between the two widths: about 1e-2), so
bfloat16 runs with ``verify=False`` only. The table's last column is the maximum relative error
of the logits measured after the peak was read, for every run.

Memory, read from ``/proc/self/status`` (Linux): the process's resident set before the model is
built (``base``: Python, torch, transformers), after it is built, and its high-water mark
(``VmHWM``) during ``widen`` alone (reset just before through ``/proc/self/clear_refs``). The
ratio is ``(peak - base) / (old bytes + new bytes)``: 1.0 would mean widen needs nothing beyond
holding both models; the target is <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "out"
GIB = 2**30

BASE = {
    "num_key_value_heads": 4,  # grouped-query attention
    "vocab_size": 32000,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
PRESETS = {
    # 0.29B -> 1.03B: float32 fits with verification (old + new 4.9 GiB)
    "0.3b": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 20,
        "num_attention_heads": 16,
    },
    # TinyLlama-1.1B's shape: 1.10B -> 4.2B; bfloat16 only on a 24 GB machine (old + new 10 GiB)
    "1.1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
    },
}


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset the resident-set high-water mark (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(
    dtype_name: str, verify: bool, factor: float, threads: int, size: str, layers: int | None
) -> dict:
    """Build, widen and measure in this process; returns the measurements."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import autogrow

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    base = proc_status("VmRSS")
    fields = {**BASE, **PRESETS[size]}
    if layers is not None:
        fields["num_hidden_layers"] = layers
    config = AutoConfig.for_model("llama", **fields)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    build_seconds = time.perf_counter() - t0
    old_params = sum(p.numel() for p in model.parameters())
    old_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    built = proc_status("VmRSS")
    ids = torch.randint(0, BASE["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))

    reset_peak()
    t0 = time.perf_counter()
    big = autogrow.widen(model, factor, example_inputs=(ids,), seed=0, verify=verify)
    seconds = time.perf_counter() - t0
    peak = proc_status("VmHWM")
    after = proc_status("VmRSS")

    new_params = sum(p.numel() for p in big.parameters())
    new_bytes = sum(p.numel() * p.element_size() for p in big.parameters())
    with torch.no_grad():  # after the peak was read: the check's memory is not counted
        ref, out = model(ids).logits.float(), big(ids).logits.float()
        rel_err = float((out - ref).abs().max() / ref.abs().max())
    c = big.config
    return {
        "size": size,
        "layers": config.num_hidden_layers,
        "dtype": dtype_name,
        "verify": verify,
        "factor": factor,
        "threads": threads,
        "old_params": old_params,
        "new_params": new_params,
        "old_bytes": old_bytes,
        "new_bytes": new_bytes,
        "base_rss": base,
        "built_rss": built,
        "peak_rss": peak,
        "after_rss": after,
        "ratio": (peak - base) / (old_bytes + new_bytes),
        "build_seconds": build_seconds,
        "widen_seconds": seconds,
        "max_rel_err": rel_err,
        "new_config": {
            k: getattr(c, k)
            for k in ("hidden_size", "intermediate_size", "num_attention_heads")
            + ("num_key_value_heads", "head_dim")
        },
    }


def run_child(dtype: str, verify: bool, args: argparse.Namespace) -> dict:
    """One measurement in a fresh interpreter (so that peaks and caches do not carry over)."""
    cmd = [sys.executable, "-m", "benchmarks.llama_scale", "--child", dtype, str(int(verify))]
    cmd += ["--factor", str(args.factor), "--threads", str(args.threads)]
    cmd += ["--size", args.size] + (["--layers", str(args.layers)] if args.layers else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"size": args.size, "dtype": dtype, "verify": verify, "error": error}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    head = (
        "size  dtype     verify  params old -> new   old+new GiB  base GiB  peak GiB  "
        "ratio  widen s  max rel err"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['size']:<4}  {r['dtype']:<9} {str(r['verify']):<6}  failed: {r['error']}")
            continue
        print(
            f"{r['size']:<4}  {r['dtype']:<9} {str(r['verify']):<6}  "
            f"{r['old_params'] / 1e9:.3f}B -> {r['new_params'] / 1e9:.3f}B  "
            f"{(r['old_bytes'] + r['new_bytes']) / GIB:>11.2f}  {r['base_rss'] / GIB:>8.2f}  "
            f"{r['peak_rss'] / GIB:>8.2f}  {r['ratio']:>5.2f}  {r['widen_seconds']:>7.1f}  "
            f"{r['max_rel_err']:>11.1e}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--verify", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", choices=sorted(PRESETS), default="0.3b")
    parser.add_argument("--layers", type=int, help="override the preset's layer count (tests)")
    parser.add_argument("--child", nargs=2, metavar=("DTYPE", "VERIFY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        dtype, verify = args.child
        print(
            json.dumps(
                child(dtype, bool(int(verify)), args.factor, args.threads, args.size, args.layers)
            )
        )
        return
    rows = []
    for dtype in args.dtype:
        for v in args.verify:
            if dtype == "bfloat16" and v == "on":
                continue  # see the module docstring: bfloat16 cannot meet verify's 1e-4
            rows.append(run_child(dtype, v == "on", args))
            print(f"  done: {dtype}, verify {v}", flush=True)
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"llama_scale_{args.size}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
