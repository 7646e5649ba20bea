"""Grow inside a Hugging Face ``transformers.Trainer`` (imports transformers when imported).

```python
from autogrow.integrations.hf_trainer import add_grower

trainer = Trainer(model=model, args=args, train_dataset=data)
add_grower(trainer, autogrow.Grower({1000: autogrow.op.widen(2.0)}, seed=0))
trainer.train()
```

The callback grows ``trainer.model`` **in place** right after the optimizer step whose index
(0-based, ``state.global_step - 1``) is scheduled, so the module object that the Trainer,
its inner loop and its Accelerator hold stays the same; the Trainer's optimizer (the torch
optimizer inside Accelerate's wrapper) is replaced by the grown one, and the LR scheduler, which
holds the wrapper, goes on at its step count. Checkpoints written afterwards describe the grown
model (its config too), and resuming from one works: build the model from the checkpoint and
the callback skips the growths before the resumed step.

Under DDP (the Trainer launched with ``torchrun``/``accelerate launch``), the grower grows a
copy on every rank, checks that all ranks agree, and then the Trainer's model and its DDP
wrapper *adopt* the grown model and a new DDP wrapper
(:func:`autogrow.training.distributed.adopt`), so the objects the Trainer holds stay the same
while their contents are the grown ones.
"""

from __future__ import annotations

from typing import Any

from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

from ..errors import InvalidArgumentError
from ..training import Grower
from ..training.distributed import adopt, ddp_kwargs, is_ddp

__all__ = ["GrowthCallback", "add_grower"]


class GrowthCallback(TrainerCallback):
    """A ``TrainerCallback`` that applies ``grower`` to ``trainer`` (see the module doc)."""

    def __init__(self, grower: Grower, trainer: Any) -> None:
        if grower.on_plateau is not None:
            raise InvalidArgumentError(
                "the Trainer callback grows on a schedule; on_plateau needs the loss of every "
                "step (use the plain loop, or Lightning's callback)"
            )
        self.grower = grower
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        wrapped = trainer.model_wrapped
        if wrapped is not trainer.model and not is_ddp(wrapped) and self.grower.pending():
            raise InvalidArgumentError(
                "growth inside a Trainer that wraps its model in "
                f"{type(wrapped).__name__} (FSDP, DeepSpeed ...) is not supported (DDP is); "
                "use autogrow.Grower in your own loop (it re-shards FSDP2 models)"
            )
        if state.global_step > 0:  # resumed from a checkpoint that already holds the growths
            self.grower.resume(state.global_step - 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        wrapper = trainer.optimizer
        inner = getattr(wrapper, "optimizer", wrapper)  # accelerate's AcceleratedOptimizer
        sched = trainer.lr_scheduler
        carried = sched if getattr(sched, "optimizer", None) is inner else None
        wrapped = trainer.model_wrapped
        ddp = wrapped is not trainer.model and is_ddp(wrapped)
        model, opt, new_sched = self.grower.step(
            state.global_step - 1, trainer.model, inner, carried, inplace=not ddp
        )
        if opt is inner:
            return
        if ddp:  # a grown copy, agreed on by every rank: the objects the Trainer holds adopt it
            adopt(trainer.model, model)
            adopt(wrapped, DistributedDataParallel(trainer.model, **ddp_kwargs(wrapped)))
        assert all(p is q for p, q in zip(trainer.model.parameters(), model.parameters()))
        if wrapper is inner:
            trainer.optimizer = opt
        else:
            wrapper.optimizer = opt
        if carried is not None:
            trainer.lr_scheduler = new_sched
        for attr in ("model", "optimizer", "lr_scheduler"):
            setattr(trainer.callback_handler, attr, getattr(trainer, attr))


def add_grower(trainer: Any, grower: Grower) -> GrowthCallback:
    """Add a :class:`GrowthCallback` for ``grower`` to ``trainer``; returns it."""
    callback = GrowthCallback(grower, trainer)
    trainer.add_callback(callback)
    return callback
