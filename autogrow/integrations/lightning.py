"""Grow inside a Lightning ``Trainer`` (imports lightning when imported).

```python
from autogrow.integrations.lightning import GrowthCallback

grower = autogrow.Grower({1000: autogrow.op.widen(2.0)}, seed=0)
trainer = lightning.Trainer(max_steps=5000, callbacks=[GrowthCallback(grower, module="net")])
trainer.fit(lit_module, loader)
```

After every optimizer step (``on_train_batch_end``, once Lightning has stepped the LR
schedulers) the callback calls ``grower.step(trainer.global_step - 1, ...)`` with the
LightningModule's submodule ``module`` (the whole LightningModule when None), its optimizer
and its step-interval scheduler, and the loss the ``training_step`` returned (for
``on_plateau``). The submodule is grown **in place**, so the LightningModule keeps its
attribute; the trainer's optimizer (``trainer.strategy.optimizers``) and the scheduler in
``trainer.lr_scheduler_configs`` are replaced by the grown ones. Checkpoints saved afterwards
hold the grown weights and optimizer state; to resume, build the LightningModule with the
grown architecture (``autogrow.load`` replays a saved recipe) and the callback skips the
growths before the resumed step.

Under the DDP strategies every rank grows a copy (same seed, digests compared across ranks);
the submodule and the strategy's DDP wrapper then adopt the grown module and a new wrapper
(:func:`autogrow.training.distributed.adopt`), so the objects Lightning holds stay the same.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.nn.parallel import DistributedDataParallel

from ..errors import InvalidArgumentError
from ..training import Grower
from ..training.distributed import adopt, ddp_kwargs, is_ddp

__all__ = ["GrowthCallback"]


class GrowthCallback(pl.Callback):
    """A Lightning ``Callback`` that applies ``grower`` (see the module doc)."""

    def __init__(self, grower: Grower, module: str | None = None) -> None:
        self.grower = grower
        self.module = module

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        if wrapped is not pl_module and not is_ddp(wrapped) and self.grower.pending():
            raise InvalidArgumentError(
                f"growth inside a Lightning strategy that wraps the module in "
                f"{type(wrapped).__name__} is not supported (DDP is); use autogrow.Grower in "
                "your own loop (it re-shards FSDP2 models)"
            )
        if len(trainer.optimizers) > 1:
            raise InvalidArgumentError("growth supports one optimizer per LightningModule")
        if trainer.global_step > 0:
            self.grower.resume(trainer.global_step - 1)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        target = pl_module.get_submodule(self.module) if self.module else pl_module
        opt = trainer.optimizers[0] if trainer.optimizers else None
        configs = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]
        sched = configs[0].scheduler if configs else None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        wrapped = trainer.strategy.model
        ddp = wrapped is not pl_module and is_ddp(wrapped)
        model, new_opt, new_sched = self.grower.step(
            trainer.global_step - 1,
            target,
            opt,
            sched,
            loss=loss if self.grower.on_plateau is not None else None,
            inplace=not ddp,
        )
        if new_opt is opt:
            return
        if ddp:  # a grown copy that every rank agreed on: adopt it, re-wrap
            adopt(target, model)
            adopt(wrapped, DistributedDataParallel(pl_module, **ddp_kwargs(wrapped)))
        trainer.strategy.optimizers = [new_opt]
        for c in trainer.lr_scheduler_configs:
            if c.scheduler is sched:
                c.scheduler = new_sched
            elif getattr(c.scheduler, "optimizer", None) is opt:  # an epoch-interval one
                from ..training.lr import carry_scheduler

                c.scheduler = carry_scheduler(c.scheduler, opt, new_opt)
