"""Streamed growth of a checkpoint larger than the memory it may use: widen a Llama-shaped
checkpoint x2 on disk under a memory cap; peak memory, wall time, and time relative to a plain
copy of the same bytes. Then, on paper, the same run for a 70B-class config.

``python -m benchmarks.stream_checkpoint [--size 1.1b|0.1b] [--cap-gib 2.0] [--tmp /tmp]``
(from the repository root, dev venv).

1. Writes a random checkpoint (bfloat16, values N(0, 0.02), norm weights 1) in Hugging Face's
   layout, 500 MB shards: ``--size 1.1b`` is TinyLlama-1.1B's shape (hidden 2048, 22 layers,
   32 query / 4 key-value heads, MLP 5632, vocabulary 32000, untied): 1.10B parameters, 2.2 GB.
2. Times a plain copy of the same bytes: reading every source file and writing as many bytes
   as the grown checkpoint holds (read in 64 MiB blocks, written the same way; no fsync, like
   the growth itself; the source is in the page cache for both, having just been written).
3. Runs ``autogrow.widen_checkpoint(src, 2.0, out, max_shard_size="500MB")`` with
   verification in a child process under a cap on its resident memory, enforced by a watchdog
   that reads the child's ``VmRSS`` from ``/proc`` every 10 ms and kills it above the cap
   (``--cap-gib``, default 2.0 GiB, less than the 2.2 GB source). Which caps this machine
   supports: it has cgroup v1 and no user systemd, so neither ``systemd-run -p MemoryMax=`` nor
   a cgroup v2 ``memory.max`` is available; ``RLIMIT_AS`` is unusable with torch, which reserves
   address space; ``RLIMIT_DATA`` works but counts address space never touched (building a
   model with parameters on meta first asks for each parameter's ``torch.empty``, which never
   becomes resident), so a first run under ``RLIMIT_DATA`` of 2 GiB stopped in verification
   although resident memory stayed far below. Peak resident memory is the child's own
   high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` at each phase: open,
   plan, write, verify; it counts pages of the memory-mapped source files read too), not
   ``ru_maxrss``, which Linux may carry over from the parent at fork.
4. Plans the same widening for Llama-2-70B's config on the meta device (the real shapes) and
   extrapolates time from the measured seconds per byte read + written, and memory from the
   measured resident size after building the model plus the working set of growing (a reusable
   buffer as large as the largest column gather for each tensor in flight, plus the stored
   tensor being read), which is larger than that of verifying one module.

The output and source are deleted at the end. Results go to
``benchmarks/out/stream_checkpoint_<size>.json`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "out"
GIB = 2**30
SHARD = "500MB"

BASE = {
    "vocab_size": 32000,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
PRESETS = {
    "1.1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
    },
    "0.1b": {  # a smoke test of the script
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
    },
}
LLAMA2_70B = {
    "vocab_size": 32000,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def write_source(path: Path, config: dict) -> int:
    """A random bfloat16 checkpoint of ``config`` in 500 MB shards; returns its bytes."""
    import torch
    import transformers

    from autogrow.adapters.directories import parameters_on_meta
    from autogrow.checkpoint.stream.writer import (
        OutputTensor,
        PartialOutput,
        parse_size,
        write_index,
        write_shards,
    )

    cfg = transformers.LlamaConfig(**config)
    with parameters_on_meta(buffers=True):
        model = transformers.LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)

    def random(shape: tuple[int, ...], norm: bool):
        if norm:
            return lambda _: torch.ones(shape, dtype=torch.bfloat16)
        return lambda _: (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    tensors = [
        OutputTensor(n, tuple(p.shape), torch.bfloat16, random(tuple(p.shape), p.ndim == 1))
        for n, p in model.state_dict().items()
    ]
    partial = PartialOutput(path, overwrite=False)
    weight_map, _ = write_shards(partial, tensors, parse_size(SHARD))
    total = sum(t.nbytes for t in tensors)
    write_index(partial, weight_map, total)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(str(partial.tmp))
    partial.commit()
    return total


def plain_copy_seconds(src: Path, out_bytes: int, dest: Path) -> float:
    """Read every file of ``src`` and write ``out_bytes`` bytes to ``dest``."""
    block = 64 * 2**20
    start = time.perf_counter()
    data = b""
    for f in sorted(src.iterdir()):
        with open(f, "rb") as h:
            while chunk := h.read(block):
                data = chunk
    written = 0
    with open(dest, "wb") as h:
        while written < out_bytes:
            piece = data[: min(len(data), out_bytes - written)] or b"\0" * block
            h.write(piece)
            written += len(piece)
    seconds = time.perf_counter() - start
    dest.unlink()
    return seconds


CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
base = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
import autogrow
from autogrow.checkpoint.stream import api
peaks = {}
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
def phase(name, f):  # the high-water mark of resident memory during each phase
    def run(*args, **kwargs):
        open("/proc/self/clear_refs", "w").write("5")
        try:
            return f(*args, **kwargs)
        finally:
            peaks[name] = hwm()
    return run
api._open = phase("open", api._open)
api.plan_widen = phase("plan", api.plan_widen)
api.write_shards = phase("write", api.write_shards)
api.check_streamed = phase("verify", api.check_streamed)
start = time.perf_counter()
r = autogrow.widen_checkpoint(sys.argv[1], 2.0, sys.argv[2], max_shard_size=sys.argv[3], seed=0)
print(json.dumps({
    "seconds": time.perf_counter() - start, "phases": r.seconds, "max_error": r.max_error,
    "bytes_written": r.bytes_written, "shards": r.shards, "parameters": r.parameters,
    "changes": r.changes, "base_rss": base, "phase_peaks": peaks,
}))
"""


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_capped(src: Path, out: Path, cap: int, threads: int) -> dict:
    """The widening in a child process, killed if its resident memory passes ``cap``."""
    cmd = [sys.executable, "-c", CHILD, str(src), str(out), SHARD, str(threads)]
    with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=log, stderr=err, text=True, cwd=ROOT)
        killed = 0
        while proc.poll() is None:
            rss = _rss(proc.pid)
            if rss > cap:
                proc.kill()
                killed = rss
            time.sleep(0.01)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        log.seek(0)
        err.seek(0)
        stdout, stderr = log.read(), err.read()
    if killed:
        raise SystemExit(f"the run passed the cap: {killed / GIB:.2f} GiB resident")
    if proc.returncode != 0:
        raise SystemExit(f"the capped run failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # ru_maxrss of a child can start at its parent's resident size at fork (Linux keeps it
    # across exec), so the peak is the child's own high-water marks, read per phase
    result["ru_maxrss"] = usage.ru_maxrss * 1024
    result["peak_rss"] = max(result["phase_peaks"].values())
    return result


def plan_70b() -> dict:
    """Widen x2 planned on meta for Llama-2-70B's config: the output's bytes and largest
    tensor, and how long the planning takes."""
    import torch
    import transformers

    from autogrow.adapters.directories import parameters_on_meta
    from autogrow.checkpoint.stream.plan import meta_inputs
    from autogrow.transforms.widen import WidenTransform

    with parameters_on_meta(buffers=True):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA2_70B)).eval()
    start = time.perf_counter()
    transform = WidenTransform(2.0, seed=0)
    transform.plan(model, meta_inputs(model), verify=False)
    adapt = transform.prepare_adapter(model)
    result, _ = transform.apply(model, inplace=False)
    if adapt is not None:
        adapt(result)
    seconds = time.perf_counter() - start
    item = torch.tensor([], dtype=torch.bfloat16).element_size()
    old = {n: t.numel() * item for n, t in model.state_dict().items()}
    new = {n: t.numel() * item for n, t in result.state_dict().items()}
    # growing holds one reusable buffer per tensor in flight (the grower's and the writer's,
    # each as large as the largest column gather) and the stored tensor being read; a tensor
    # off the matrix route holds its stored tensor, the first axis's gather and the output;
    # one whose rows alone grow is written from the stored tensor itself
    from autogrow.checkpoint.stream.grow import scratch_bytes
    from autogrow.checkpoint.stream.writer import grow_workers

    named = dict(model.named_parameters())
    axes = {n: transform.axis_maps.get(n, []) for n in old}
    shapes = {n: (tuple(t.shape), torch.bfloat16) for n, t in model.state_dict().items()}
    scratch = {n: scratch_bytes(*shapes[n], axes[n]) for n in old if n in named}
    buffers = (grow_workers() + 1) * max(scratch.values())
    others = [  # vectors (norm weights), grown by grow_tensor's route
        old[n] + new[n] + (new[n] // 2 if len(axes[n]) > 1 else 0)
        for n in old
        if len(shapes[n][0]) != 2
    ]
    held = max(buffers + max(old.values()), max(others, default=0))
    return {
        "largest_grow_working_set": held,
        "plan_seconds": seconds,
        "source_bytes": sum(old.values()),
        "output_bytes": sum(new.values()),
        "largest_output_tensor": max(new.values()),
        "largest_source_tensor": max(old.values()),
        "parameters": (sum(old.values()) // item, sum(new.values()) // item),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(PRESETS), default="1.1b")
    parser.add_argument("--cap-gib", type=float, default=2.0, help="cap on resident memory")
    parser.add_argument("--tmp", default="/tmp", help="where the checkpoints are written")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-70b", action="store_true")
    args = parser.parse_args()
    config = {**BASE, **PRESETS[args.size]}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="stream_bench_", dir=args.tmp))
    src, out = work / "src", work / "out"
    try:
        t = time.perf_counter()
        source_bytes = write_source(src, config)
        print(f"source: {source_bytes / 1e9:.2f} GB written in {time.perf_counter() - t:.0f} s")
        cap = int(args.cap_gib * GIB)
        run = run_capped(src, out, cap, args.threads)
        copy = plain_copy_seconds(src, run["bytes_written"], work / "copy.bin")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    grow = run["phases"]["plan"] + run["phases"]["write"]
    moved = source_bytes + run["bytes_written"]
    report = {
        "size": args.size,
        "config": config,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{args.threads}, {platform.platform()}",
        "commit": commit,
        "cap_bytes": cap,
        "source_bytes": source_bytes,
        **run,
        "plain_copy_seconds": copy,
        "grow_over_copy": grow / copy,
        "seconds_per_gb_moved": grow / (moved / 1e9),
    }
    rows = [
        ("parameters", f"{run['parameters'][0] / 1e9:.2f}B -> {run['parameters'][1] / 1e9:.2f}B"),
        ("source / output", f"{source_bytes / 1e9:.2f} GB / {run['bytes_written'] / 1e9:.2f} GB"),
        ("cap on resident memory", f"{cap / GIB:.2f} GiB"),
        ("peak RSS (VmHWM)", f"{run['peak_rss'] / GIB:.2f} GiB"),
        ("RSS after import torch", f"{run['base_rss'] / GIB:.2f} GiB"),
        *(
            (f"  peak RSS in {name}", f"{value / GIB:.2f} GiB")
            for name, value in run["phase_peaks"].items()
        ),
        ("plan (meta device)", f"{run['phases']['plan']:.1f} s"),
        ("read + grow + write", f"{run['phases']['write']:.1f} s"),
        ("streamed verification", f"{run['phases'].get('verify', 0):.1f} s"),
        ("max relative error", f"{run['max_error']:.2e}"),
        ("plain copy of the bytes", f"{copy:.1f} s"),
        ("(plan + write) / copy", f"{grow / copy:.2f}x"),
        ("write / copy", f"{run['phases']['write'] / copy:.2f}x"),
    ]
    if not args.skip_70b:
        big = plan_70b()
        per_byte = grow / moved
        # fixed costs (planning) are measured for 70B itself; per-byte cost from the run above
        estimate = big["plan_seconds"] + per_byte * (big["source_bytes"] + big["output_bytes"])
        # resident beyond the measured phase peaks' base (after building the model): growing
        # the largest tensor, or verifying the largest module (its stored weights, not cast)
        base = run["phase_peaks"]["open"]
        memory = base + max(big["largest_grow_working_set"], big["largest_output_tensor"])
        report["llama2_70b"] = {**big, "estimated_seconds": estimate, "estimated_peak": memory}
        rows += [
            ("70B: parameters", f"{big['parameters'][0] / 1e9:.1f}B -> "
             f"{big['parameters'][1] / 1e9:.1f}B"),
            ("70B: source / output", f"{big['source_bytes'] / 1e9:.0f} GB / "
             f"{big['output_bytes'] / 1e9:.0f} GB"),
            ("70B: plan on meta (measured)", f"{big['plan_seconds']:.0f} s"),
            ("70B: largest output tensor", f"{big['largest_output_tensor'] / 1e9:.2f} GB"),
            ("70B: estimated time", f"{estimate / 3600:.1f} h"),
            ("70B: estimated peak memory", f"{memory / GIB:.1f} GiB"),
        ]  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"stream_checkpoint_{args.size}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
