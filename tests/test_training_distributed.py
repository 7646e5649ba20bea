"""Growth under DDP and FSDP2: two CPU processes (gloo), growth at the same steps on both."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

distributed_workers = pytest.importorskip("distributed_workers")

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is needed",
)


def _run(kind: str, tmp_path) -> list[dict]:
    port = distributed_workers.free_port()
    mp.spawn(distributed_workers.run, args=(2, port, str(tmp_path), kind), nprocs=2, join=True)
    return [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_growth_mid_training_is_identical_on_every_rank(kind, tmp_path):
    r0, r1 = _run(kind, tmp_path)
    for r in (r0, r1):
        assert [e["step"] for e in r["events"]] == [3, 6]
        for e in r["events"]:  # exact transforms: the loss right after equals the loss before
            assert e["after"] == pytest.approx(e["before"], rel=1e-5, abs=1e-7)
            assert e["new_optimizer"]
            assert e["wd"] == [0.1, 0.0]  # decay / no-decay groups kept
        assert r["events"][0]["sched_epoch"] == 4  # the schedule continued from its count
        assert r["events"][1]["groups"] == [4, 4]  # deepen: new weight and bias in their groups
        assert r["sched_epoch"] == 12
        assert r["shapes"]["0.weight"] == [16, 6]  # widened ...
        assert len({k.split(".")[0] for k in r["shapes"]}) == 4  # ... and one layer deeper
        assert r["final_loss"] == r["final_loss"]  # finite: training continued
        assert r["failure"].startswith(("GroupNotFoundError", "GrowthError"))
        assert "no-such-module" in r["failure"] or "rank 1" in r["failure"]
    assert r0["is_wrapped"] == r1["is_wrapped"]
    assert r0["is_wrapped"] == ("DistributedDataParallel" if kind == "ddp" else "FSDPSequential")
    assert r0["seeds"] == r1["seeds"] and r0["digests"] == r1["digests"]  # same growth
    assert r0["final_digest"][0] == r0["final_digest"][1]  # and identical after training on
    if kind == "fsdp2":
        assert "Grower(build=..., shard=...)" in r0["no_build"]
    if kind == "ddp":
        for r in (r0, r1):
            assert "different models on the ranks" in r["disagree"]
            assert r["disagree_width"] == 8
            assert r["plateau_steps"] == [3]  # the same step on both ranks
            assert r["plateau_wrapped"] == "DistributedDataParallel"


def test_trainer_callback_under_ddp_grows_every_rank_the_same(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    port = distributed_workers.free_port()
    mp.spawn(distributed_workers.trainer_run, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for r in (r0, r1):
        assert r["wrapped"] == "DistributedDataParallel" and r["same_module"]
        assert r["hidden"] == 32 and r["layers"] == 2 and r["steps"] == 5
        assert len(r["before"]) == len(r["after"]) == 2
        for before, after in zip(r["before"], r["after"]):
            assert after == pytest.approx(before, rel=1e-5)
    assert r0["digests"] == r1["digests"] and len(r0["digests"]) == 2
    assert r0["final_digest"][0] == r0["final_digest"][1]  # DDP kept the ranks in sync after


def test_lightning_callback_under_ddp_grows_every_rank_the_same(tmp_path):
    pytest.importorskip("lightning")
    port = distributed_workers.free_port()
    mp.spawn(distributed_workers.lightning_run, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for r in (r0, r1):
        assert r["wrapped"] == "DistributedDataParallel" and r["same_module"]
        assert r["width"] == 16 and r["depth"] == 7 and r["steps"] == 7
        assert len(r["before"]) == len(r["after"]) == 2
        for before, after in zip(r["before"], r["after"]):
            assert after == pytest.approx(before, rel=1e-5)
    assert r0["digests"] == r1["digests"] and len(r0["digests"]) == 2
    assert r0["final_digest"][0] == r0["final_digest"][1]
