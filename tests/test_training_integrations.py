"""The Hugging Face Trainer and Lightning callbacks: growth inside those loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autogrow

VOCAB = 64


def _llama(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, VOCAB, (8,), generator=g)
        return {"input_ids": ids, "labels": ids}


PROBE = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(7))


def _probe_loss(model) -> float:
    with torch.no_grad():
        return model(input_ids=PROBE, labels=PROBE).loss.item()


def _trainer(model, out, max_steps: int, callbacks=()):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.01,
        save_strategy="steps",
        save_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=list(callbacks))


def test_trainer_callback_grows_in_place_and_resumes_from_a_grown_checkpoint(tmp_path):
    from transformers import LlamaForCausalLM, TrainerCallback

    from autogrow.integrations.hf_trainer import add_grower

    probes: dict[str, list] = {"before": [], "after": []}

    class Probe(TrainerCallback):
        def __init__(self, key: str, trainer_ref: list):
            self.key, self.ref = key, trainer_ref

        def on_step_end(self, args, state, control, **kw):
            if state.global_step - 1 in (1, 2):
                trainer = self.ref[0]
                probes[self.key].append(
                    (_probe_loss(trainer.model), id(trainer.optimizer.optimizer))
                )

    ref: list = []
    model = _llama()
    trainer = _trainer(model, tmp_path, max_steps=6)
    trainer.add_callback(Probe("before", ref))
    grower = autogrow.Grower({1: autogrow.op.widen(2.0), 2: autogrow.op.deepen()}, seed=0)
    add_grower(trainer, grower)
    trainer.add_callback(Probe("after", ref))
    ref.append(trainer)
    trainer.train()
    assert [e.step for e in grower.history] == [1, 2]
    for (before, opt_before), (after, opt_after) in zip(probes["before"], probes["after"]):
        assert after == pytest.approx(before, rel=1e-5)  # the loss right after == right before
        assert opt_after != opt_before  # the Trainer's optimizer was replaced
    assert trainer.model is model and model.config.hidden_size == 32
    assert model.config.num_hidden_layers == 2
    inner = trainer.optimizer.optimizer
    assert {id(p) for g in inner.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters()
    }
    assert [g["weight_decay"] for g in inner.param_groups] == [0.01, 0.0]
    assert trainer.lr_scheduler.last_epoch == 6  # the schedule went on
    trainer.save_model(str(tmp_path / "final"))
    saved = LlamaForCausalLM.from_pretrained(str(tmp_path / "final"))
    assert saved.config.hidden_size == 32 and saved.config.num_hidden_layers == 2
    assert _probe_loss(saved) == pytest.approx(_probe_loss(model), rel=1e-5)

    # resume from the checkpoint written after growth (step 4): the grown model, its
    # optimizer state and schedule load, and the growths are not applied again
    checkpoint = tmp_path / "checkpoint-4"
    resumed = LlamaForCausalLM.from_pretrained(str(checkpoint))
    trainer2 = _trainer(resumed, tmp_path / "again", max_steps=6)
    grower2 = autogrow.Grower({1: autogrow.op.widen(2.0), 2: autogrow.op.deepen()}, seed=0)
    add_grower(trainer2, grower2)
    trainer2.train(resume_from_checkpoint=str(checkpoint))
    assert trainer2.state.global_step == 6 and grower2.history == []
    assert resumed.config.hidden_size == 32
    assert trainer2.lr_scheduler.last_epoch == 6
    state = trainer2.optimizer.optimizer.state[resumed.model.embed_tokens.weight]
    assert state["step"].item() == 6 and state["exp_avg"].shape == (VOCAB, 32)


def test_trainer_callback_refuses_plateau_growth():
    pytest.importorskip("transformers")
    from autogrow.integrations.hf_trainer import GrowthCallback

    with pytest.raises(autogrow.InvalidArgumentError, match="on_plateau"):
        GrowthCallback(autogrow.Grower(on_plateau=autogrow.op.widen(2.0)), trainer=None)


def test_lightning_callback_grows_the_module_optimizer_and_schedule(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    from autogrow.integrations.lightning import GrowthCallback

    x_probe = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y_probe = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))

    def probe(net) -> float:
        with torch.no_grad():
            return nn.functional.mse_loss(net(x_probe), y_probe).item()

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    seen: list = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step - 1 in (2, 4):
                seen.append((probe(pl_module.net), id(trainer.optimizers[0])))

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 2))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    grower = autogrow.Grower({2: autogrow.op.widen(2.0), 4: autogrow.op.deepen()}, seed=0)
    lit = Lit()
    trainer = pl.Trainer(
        max_steps=7,
        accelerator="cpu",
        devices=1,
        callbacks=[Probe(), GrowthCallback(grower, module="net"), Probe()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(lit, loader)
    assert [e.step for e in grower.history] == [2, 4]
    assert len(seen) == 4
    for (before, opt_before), (after, opt_after) in zip(seen[::2], seen[1::2]):
        assert after == pytest.approx(before, rel=1e-5)  # loss right after == right before
        assert opt_after != opt_before
    assert lit.net[0].out_features == 16 and len(lit.net) == 5
    opt = trainer.optimizers[0]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in lit.parameters()}
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.optimizer is opt and sched.last_epoch == 7
    ckpt = tmp_path / "grown.ckpt"
    trainer.save_checkpoint(str(ckpt))
    saved = torch.load(str(ckpt), weights_only=False)
    assert saved["state_dict"]["net.0.weight"].shape == (16, 4)
    assert len(saved["optimizer_states"][0]["state"]) == len(list(lit.parameters()))

    # resume: a LightningModule with the grown architecture loads the checkpoint, and the
    # callback does not grow again
    lit2 = Lit()
    lit2.net = autogrow.deepen(autogrow.widen(Lit().net, 2.0, seed=0))
    grower2 = autogrow.Grower({2: autogrow.op.widen(2.0), 4: autogrow.op.deepen()}, seed=0)
    trainer2 = pl.Trainer(
        max_steps=9,
        accelerator="cpu",
        devices=1,
        callbacks=[GrowthCallback(grower2, module="net")],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer2.fit(lit2, loader, ckpt_path=str(ckpt))
    assert trainer2.global_step == 9 and grower2.history == []
    assert trainer2.lr_scheduler_configs[0].scheduler.last_epoch == 9
