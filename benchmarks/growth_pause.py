"""The pause that growth causes inside training, in units of one training step, and its memory.

``python -m benchmarks.growth_pause [--steps 12] [--hidden 256] [--layers 4] [--verify on off]``
(repository root, dev venv) trains a small Llama-style model (``LlamaForCausalLM`` from a
config: hidden 256, 4 layers, 4 heads, MLP 688, vocabulary 2048, sequence 128, batch 4 per
rank) on random tokens with AdamW under DDP and under FSDP2 (``fully_shard`` per decoder layer
and the root), on two CPU processes (gloo, one thread each). An ``autogrow.Grower`` widens the
model x2 after step ``steps // 3`` and deepens it (one decoder layer) after step
``2 * steps // 3``.

Per growth, the maximum over the ranks of:

* ``pause``: the seconds ``grower.step`` took (gather, grow the model and the optimizer
  state, verify, all-gather of the digest, re-wrap or re-shard, carry the scheduler), plus
  how much longer the first training step after growth took than the median step of the grown
  model; divided by the median step time of the model *before* growth (``steps``), and by
  the grown model's (``steps (grown)``);
* ``memory``: the resident-set high-water mark during growth minus the resident set before
  it, next to the same for one training step (``/proc/self/clear_refs`` resets the mark,
  Linux) and to the bytes of the grown parameters and optimizer state this rank holds.

Results go to ``benchmarks/out/growth_pause.json`` and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=2048,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.6875),
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def shard(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def worker(rank: int, port: int, kind: str, args: argparse.Namespace, out: str) -> None:
    import functools

    import autogrow

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    make = functools.partial(build, args.hidden, args.layers)
    model = make()
    model = nn_ddp(model) if kind == "ddp" else shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    steps = args.steps
    schedule = {steps // 3: autogrow.op.widen(2.0), 2 * steps // 3: autogrow.op.deepen()}
    grower = autogrow.Grower(
        schedule,
        seed=0,
        verify=args.verify == "on",
        build=make,
        shard=shard,
        example_inputs=(torch.randint(0, 2048, (1, 8)),),
    )
    g = torch.Generator().manual_seed(rank)
    times: list[float] = []
    memory: list[int] = []
    growths: list[dict] = []
    for step in range(steps):
        ids = torch.randint(0, 2048, (4, 128), generator=g)
        base = rss()
        reset_peak()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
        memory.append(rss("VmHWM") - base)
        base = rss()
        reset_peak()
        t = time.perf_counter()
        model, opt, sched = grower.step(step, model, opt, sched)
        if step in schedule:
            growths.append(
                {
                    "step": step,
                    "op": type(schedule[step]).__name__.lower(),
                    "seconds": time.perf_counter() - t,
                    "memory": rss("VmHWM") - base,
                    "state": _state_bytes(model, opt),
                }
            )
    record = {"times": times, "memory": memory, "growths": growths}
    with open(os.path.join(out, f"{kind}-{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


def _state_bytes(model, opt) -> int:
    """Bytes of this rank's parameters and optimizer state (a shard's under FSDP2)."""

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    total = sum(local(p).numel() * local(p).element_size() for p in model.parameters())
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                total += local(v).numel() * local(v).element_size()
    return total


def nn_ddp(model):
    return torch.nn.parallel.DistributedDataParallel(model)


def summarise(records: list[dict], steps: int) -> list[dict]:
    rows = []
    n = len(records[0]["growths"])
    for k in range(n):
        at = records[0]["growths"][k]["step"]
        end = records[0]["growths"][k + 1]["step"] if k + 1 < n else steps - 1
        per_rank = []
        for r in records:
            t = r["times"]
            before = statistics.median(t[max(1, at - 3) : at + 1])  # steps before growth
            grown = statistics.median(t[at + 2 : end + 1]) if end >= at + 2 else t[at + 1]
            first = t[at + 1] - grown  # the first step after growth: re-bucketing, warm-up
            pause = r["growths"][k]["seconds"] + max(0.0, first)
            step_mem = statistics.median(r["memory"][max(0, at - 3) : at + 1])
            per_rank.append((pause, pause / before, pause / grown, before, grown, step_mem, r))
        worst = max(per_rank, key=lambda x: x[1])
        rows.append(
            {
                "op": worst[6]["growths"][k]["op"],
                "step": at,
                "step_s": worst[3],
                "grown_step_s": worst[4],
                "pause_s": worst[0],
                "pause_steps": worst[1],
                "pause_grown_steps": worst[2],
                "growth_mem_mib": max(r["growths"][k]["memory"] for r in records) / 2**20,
                "step_mem_mib": max(x[5] for x in per_rank) / 2**20,
                "state_mib": max(r["growths"][k]["state"] for r in records) / 2**20,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--kinds", nargs="+", default=["ddp", "fsdp2"])
    parser.add_argument("--verify", choices=["on", "off"], default="on")
    args = parser.parse_args()
    import socket
    import tempfile

    OUT.mkdir(parents=True, exist_ok=True)
    table = []
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as tmp:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(worker, args=(port, kind, args, tmp), nprocs=2, join=True)
            records = [json.loads(Path(tmp, f"{kind}-{r}.json").read_text()) for r in range(2)]
        for row in summarise(records, args.steps):
            table.append({"kind": kind, "verify": args.verify, **row})
    path = OUT / f"growth_pause_verify_{args.verify}.json"
    path.write_text(json.dumps(table, indent=2))
    print(
        "| setup | growth | step (s) | grown step (s) | pause (s) | pause / step "
        "| pause / grown step | growth peak (MiB) | step peak (MiB) | grown state (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['kind']}, verify {r['verify']} | {r['op']} after step {r['step']} "
            f"| {r['step_s']:.3f} | {r['grown_step_s']:.3f} | {r['pause_s']:.2f} "
            f"| {r['pause_steps']:.1f} | {r['pause_grown_steps']:.1f} "
            f"| {r['growth_mem_mib']:.0f} | {r['step_mem_mib']:.0f} | {r['state_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
