"""Worker processes of tests/test_training_distributed.py (two CPU ranks, gloo).

Each worker writes what it saw to ``<out>/<rank>.json``; the test compares the ranks.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import autogrow
from autogrow.training import GrowthError
from autogrow.training.distributed import digest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for m in model:
        if isinstance(m, nn.Linear | nn.Sequential):
            fully_shard(m)
    fully_shard(model)
    return model


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)


PROBE = _batch(99, 0)


def _probe(model: nn.Module) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(model(PROBE[0]), PROBE[1]).item()


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )


def _gathered(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def run(rank: int, world: int, port: int, out: str, kind: str) -> None:
    _init(rank, world, port)
    record: dict[str, Any] = {"events": []}
    try:
        model = build()
        if kind == "ddp":
            model = nn.parallel.DistributedDataParallel(model)
        else:
            model = shard(model)
        opt = _optimizer(model)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s))
        if kind != "ddp":  # FSDP2 without build/shard: refused on the first step, not at growth
            try:
                autogrow.Grower({5: autogrow.op.widen(2.0)}).step(0, model, opt, sched)
                record["no_build"] = "accepted"
            except autogrow.InvalidArgumentError as e:
                record["no_build"] = str(e)
        schedule = {3: autogrow.op.widen(2.0), 6: autogrow.op.deepen()}
        # seed=None: every rank draws its own, the grower uses rank 0's
        grower = autogrow.Grower(schedule, build=build, shard=shard)
        for step in range(12):
            x, y = _batch(rank, step)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            before = _probe(model)
            old = (model, opt, sched)
            model, opt, sched = grower.step(step, model, opt, sched)
            if model is not old[0]:
                record["events"].append(
                    {
                        "step": step,
                        "before": before,
                        "after": _probe(model),
                        "new_optimizer": opt is not old[1],
                        "sched_epoch": sched.last_epoch,
                        "lr": [g["lr"] for g in opt.param_groups],
                        "groups": [len(g["params"]) for g in opt.param_groups],
                        "wd": [g["weight_decay"] for g in opt.param_groups],
                        "state": sum(len(s) > 0 for s in opt.state.values()),
                        "params": sum(1 for _ in opt.param_groups[0]["params"])
                        + sum(1 for _ in opt.param_groups[1]["params"]),
                    }
                )
            if step == 8:  # a growth that fails on rank 1 only: refused on both, nothing changed
                bad = autogrow.op.widen({"no-such-module": 64} if rank == 1 else 2.0)
                now = functools.partial(copy.deepcopy, grower.template)  # the grown architecture
                failing = autogrow.Grower({9: bad}, seed=1, build=now, shard=shard)
                failing.resume(8)
                try:
                    failing.step(9, model, opt, sched)
                    record["failure"] = "grew"
                except autogrow.AutogrowError as e:
                    record["failure"] = f"{type(e).__name__}: {e}"
        record["final_loss"] = loss.item()
        record["sched_epoch"] = sched.last_epoch
        record["is_wrapped"] = type(model).__name__
        inner = model.module if kind == "ddp" else model
        record["shapes"] = {
            n: list(p.full_tensor().shape) if hasattr(p, "full_tensor") else list(p.shape)
            for n, p in inner.state_dict().items()
        }
        record["digests"] = [e.digest for e in grower.history]
        record["seeds"] = [e.seed for e in grower.history]
        record["final_digest"] = _gathered(digest(inner))
        if kind == "ddp":  # ranks that hold different models are refused before anything changes
            torch.manual_seed(rank)
            lone = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
            try:
                autogrow.Grower({0: autogrow.op.widen(2.0)}, seed=0).step(0, lone)
                record["disagree"] = "grew"
            except GrowthError as e:
                record["disagree"] = str(e)
            record["disagree_width"] = lone[0].out_features
            # a plateau decision from rank-dependent losses: averaged, the same on both ranks
            net = nn.parallel.DistributedDataParallel(build())
            sgd = torch.optim.SGD(net.parameters(), lr=0.0)
            plateau = autogrow.Grower(on_plateau=autogrow.op.deepen(), patience=3, lr="rewarm")
            for step in range(8):
                x, y = _batch(rank, 0)
                loss = nn.functional.mse_loss(net(x), y) * (1 + rank)
                loss.backward()
                sgd.step()
                sgd.zero_grad()
                net, sgd, _ = plateau.step(step, net, sgd, loss=loss)
            record["plateau_steps"] = [e.step for e in plateau.history]
            record["plateau_wrapped"] = type(net).__name__
        # Both ranks done communicating before either tears gloo down: a rank that destroys
        # its group while the other still sends can abort in gloo's threads (seen once in CI).
        dist.barrier()
    finally:
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            json.dump(record, f)
        dist.destroy_process_group()


def trainer_run(rank: int, world: int, port: int, out: str) -> None:
    """The Hugging Face Trainer under DDP (gloo, CPU) with autogrow's callback."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from autogrow.integrations.hf_trainer import add_grower

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)

    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 64

        def __getitem__(self, i: int) -> dict:
            ids = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids}

    probe = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(7))
    record: dict[str, Any] = {"before": [], "after": []}
    holder: list = []

    class Probe(TrainerCallback):
        def __init__(self, key: str):
            self.key = key

        def on_step_end(self, args, state, control, **kw):
            if state.global_step - 1 in (1, 2):
                trainer = holder[0]
                with torch.no_grad():
                    loss = trainer.model(input_ids=probe, labels=probe).loss.item()
                record[self.key].append(loss)

    args = TrainingArguments(
        output_dir=os.path.join(out, "trainer"),
        max_steps=5,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.01,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo",
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Tokens())
    holder.append(trainer)
    trainer.add_callback(Probe("before"))
    grower = autogrow.Grower({1: autogrow.op.widen(2.0), 2: autogrow.op.deepen()}, seed=0)
    add_grower(trainer, grower)
    trainer.add_callback(Probe("after"))
    try:
        trainer.train()
        wrapped = trainer.model_wrapped
        record["wrapped"] = type(wrapped).__name__
        record["same_module"] = getattr(wrapped, "module", None) is trainer.model
        record["hidden"] = trainer.model.config.hidden_size
        record["layers"] = trainer.model.config.num_hidden_layers
        record["steps"] = trainer.state.global_step
        record["digests"] = [e.digest for e in grower.history]
        record["final_digest"] = _gathered(digest(trainer.model))
    finally:
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            json.dump(record, f)
    dist.barrier()
    # Interpreter teardown after a Trainer run sometimes aborts in a native thread ("terminate
    # called without an active exception"): the results are written, leave without it.
    os._exit(0)


def lightning_run(rank: int, world: int, port: int, out: str) -> None:
    """Lightning's DDP strategy (processes launched here, gloo, CPU) with autogrow's callback."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    import lightning.pytorch as pl

    from autogrow.integrations.lightning import GrowthCallback

    x_probe, y_probe = PROBE

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = build()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return _optimizer(self)

    record: dict[str, Any] = {"before": [], "after": []}

    class Probe(pl.Callback):
        def __init__(self, key: str):
            self.key = key

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step - 1 in (2, 4):
                with torch.no_grad():
                    loss = nn.functional.mse_loss(pl_module.net(x_probe), y_probe).item()
                record[self.key].append(loss)
                wrapped = trainer.strategy.model  # fit unwraps it when it ends
                record["wrapped"] = type(wrapped).__name__
                record["same_module"] = getattr(wrapped, "module", None) is pl_module

    g = torch.Generator().manual_seed(rank)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6, generator=g), torch.randn(64, 2))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    grower = autogrow.Grower({2: autogrow.op.widen(2.0), 4: autogrow.op.deepen()})
    lit = Lit()
    trainer = pl.Trainer(
        max_steps=7,
        accelerator="cpu",
        devices=world,
        strategy="ddp",
        callbacks=[Probe("before"), GrowthCallback(grower, module="net"), Probe("after")],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out,
    )
    try:
        trainer.fit(lit, loader)
        record["width"] = lit.net[0].out_features
        record["depth"] = len(lit.net)
        record["steps"] = trainer.global_step
        record["digests"] = [e.digest for e in grower.history]
        record["final_digest"] = _gathered(digest(lit.net))
    finally:
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            json.dump(record, f)
    dist.barrier()
    os._exit(0)  # as in trainer_run: no teardown after the run
