"""The growth search end to end on tiny digits searches: trials, workers, resume, checkpoints."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import autogrow
from autogrow.search import Growth, SearchSpace, Training, checkpoints, load_space
from autogrow.search.data import digits
from autogrow.search.runner import artifact_store, counts, open_study, run

ROOT = Path(__file__).resolve().parents[1]

# A search-space file for worker processes: 300 training digits, 1 epoch per trial.
# ``DELAY`` slows every batch down so that a test can interrupt a trial mid-training.
SPACE_FILE = """
import time
from autogrow.search import Growth, SearchSpace, Training
from autogrow.search.data import digits

DELAY = {delay}

class Slow:
    def __init__(self, loader):
        self.loader = loader
    def __iter__(self):
        for batch in self.loader:
            time.sleep(DELAY)
            yield batch

def data():
    train, val = digits(batch_size=64, subset=300)
    return Slow(train), val

space = SearchSpace(
    name="tiny",
    seed="autogrow.search.models:mlp",
    seed_kwargs={{"in_features": 64, "hidden": [8, 8], "num_classes": 10}},
    input_shape=(2, 1, 8, 8),
    data=data,
    training=Training(epochs={epochs}, seed_epochs={epochs}, lr=0.1),
    growth=Growth(factors=(1.5, 2.0), max_ops=1),
    pruner="none",
)
"""


def write_space(tmp_path: Path, delay: float = 0.0, epochs: int = 1) -> Path:
    path = tmp_path / "tiny_space.py"
    path.write_text(SPACE_FILE.format(delay=delay, epochs=epochs))
    return path


def tiny_space(**kw) -> SearchSpace:
    base = dict(
        name="tiny",
        seed="autogrow.search.models:mlp",
        seed_kwargs={"in_features": 64, "hidden": [8, 8], "num_classes": 10},
        input_shape=(2, 1, 8, 8),
        data=lambda: digits(batch_size=64, subset=300),
        training=Training(epochs=1, seed_epochs=2, lr=0.1),
        growth=Growth(factors=(1.5, 2.0), max_ops=2),
    )
    return SearchSpace(**{**base, **kw})


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def retried_by(study: optuna.Study) -> dict[int, list[int]]:
    """original trial number -> the trials that retried it."""
    out: dict[int, list[int]] = {}
    for t in study.get_trials(deepcopy=False):
        if "retry_of" in t.user_attrs:
            out.setdefault(t.user_attrs["retry_of"], []).append(t.number)
    return out


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------------------------------


def test_tiny_search_end_to_end_records_lineage_and_plots(tmp_path, capsys):
    study = run(tiny_space(), 5, run_dir=tmp_path / "run", progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    root = trials[0].user_attrs
    assert root["role"] == "root" and root["parent"] is None and root["depth"] == 0
    assert root["cumulative_steps"] == root["train_steps"] == 2 * 5  # 2 epochs x 5 batches
    for t in trials[1:]:
        a = t.user_attrs
        parent = trials[a["parent"]].user_attrs
        assert a["depth"] == parent["depth"] + 1
        assert a["train_steps"] == 5
        assert a["cumulative_steps"] == parent["cumulative_steps"] + 5
        assert 1 <= len(a["plan"]) <= 2
        assert a["params"] > 0 and 0.0 <= a["accuracy"] <= 1.0
        assert t.values == [a["accuracy"]]
        # the parameter names depend only on the seed: ops, sites, factors
        assert set(t.params) <= {"n_ops", "op0", "op0_widen", "op0_factor", "op0_deepen"} | {
            "op1",
            "op1_widen",
            "op1_factor",
            "op1_deepen",
        }
    grown = [t for t in trials[1:] if t.user_attrs["params"] > root["params"]]
    assert grown, "no child grew"
    out = capsys.readouterr().out
    assert "best architecture" in out and "Linear(64→" in out
    for name in ("history.png", "pareto.png", "lineage.png", "steps.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000


def test_every_checkpoint_loads_and_reproduces_saved_outputs_without_pickle(tmp_path, monkeypatch):
    """A checkpoint promises bit-identical outputs for the same input tensor. ``load_probe``
    returns the inputs as fresh copies, like the tensor the outputs were computed on: a view
    of the file's memory map is not 64-byte aligned, and on AVX-512 CPUs a matrix product on
    it can then differ in the last bit."""
    study = run(tiny_space(), 4, run_dir=tmp_path / "run", progress=False, summary=False)
    store = artifact_store(tmp_path / "run")

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        folder = checkpoints.download(store, t.user_attrs["checkpoint"], tmp_path / str(t.number))
        model = autogrow.load(folder).eval()
        probe = checkpoints.load_probe(folder)
        assert all(v.data_ptr() % 64 == 0 and v.is_contiguous() for v in probe.values())
        with torch.no_grad():
            out = model(probe["inputs"])
        assert torch.equal(out, probe["outputs"]), f"trial {t.number}"
        assert sum(p.numel() for p in model.parameters()) == t.user_attrs["params"]
        with tarfile.open(next((tmp_path / "run" / "artifacts").glob("*"))) as tar:
            assert all(not n.endswith((".pt", ".pkl", ".pth")) for n in tar.getnames())


def test_a_child_never_calls_a_factory_smuggled_into_the_shared_store(tmp_path):
    run_dir = tmp_path / "run"
    run(tiny_space(), 1, run_dir=run_dir, progress=False, summary=False)
    store = artifact_store(run_dir)
    artifact = open_study(run_dir).get_trials()[0].user_attrs["checkpoint"]
    # whoever can write to the shared store replaces the root's recipe
    marker = tmp_path / "owned"
    folder = checkpoints.download(store, artifact, tmp_path / "root")
    info = json.loads((folder / "recipe.json").read_text())
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    info.update(factory="subprocess:run", factory_kwargs={"args": command})
    (folder / "recipe.json").write_text(json.dumps(info))
    with tarfile.open(run_dir / "artifacts" / artifact, "w") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)

    study = run(tiny_space(), 2, run_dir=run_dir, progress=False, summary=False)
    child = study.get_trials()[1]
    assert child.state == TrialState.FAIL and child.user_attrs["parent"] == 0
    reason = child.user_attrs["fail_reason"]
    assert reason.startswith("CheckpointError") and "'subprocess:run' is not on" in reason
    assert not marker.exists()


class HardcodedFlatten(nn.Module):
    """Hidden width 8 hard-coded in forward: widening it must be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))).view(-1, 8))


def hardcoded() -> nn.Module:
    return HardcodedFlatten()


def test_refused_growth_fails_the_trial_with_its_reason_and_the_study_goes_on(tmp_path):
    space = tiny_space(
        seed=f"{__name__}:hardcoded",
        seed_kwargs={},
        growth=Growth(widen=["fc1"], deepen=[], factors=(2.0,), max_ops=1),
    )
    study = run(space, 3, run_dir=tmp_path / "run", progress=False, summary=False)
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE  # the root trains the seed
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and len(trials) == 3
    for t in failed:
        assert "HardcodedSizeError" in t.user_attrs["fail_reason"]
        assert "widen 'fc1'" in t.user_attrs["fail_reason"]
    assert counts(study)["finished"] == 3


def test_max_params_fails_children_over_the_limit(tmp_path, caplog):
    space = tiny_space(max_params=700)  # the seed has 690 parameters
    optuna.logging.enable_propagation()  # let caplog see Optuna's records
    try:
        study = run(space, 3, run_dir=tmp_path / "run", progress=False, summary=False)
    finally:
        optuna.logging.disable_propagation()
    failed = [r for r in caplog.records if "max_params=700" in r.getMessage()]
    assert failed, "Optuna logged no failed trial"
    assert all(r.exc_info is None for r in failed)  # one line each, no traceback
    trials = study.get_trials()
    assert trials[0].state == TrialState.COMPLETE
    for t in trials[1:]:
        assert t.state == TrialState.FAIL
        assert "max_params=700" in t.user_attrs["fail_reason"]


def test_from_scratch_trains_every_trial_from_random_weights_with_the_same_budget(tmp_path):
    study = run(tiny_space(), 3, run_dir=tmp_path / "run", from_scratch=True, progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # seed_epochs=2 is for growth searches: the baseline's root gets one epoch like the rest
    assert [t.user_attrs["train_steps"] for t in trials] == [5, 5, 5]
    for t in trials[1:]:  # no inherited training
        assert t.user_attrs["cumulative_steps"] == 5
        assert t.user_attrs["from_scratch"] is True


def test_two_local_workers_complete_one_study_without_lost_or_duplicated_trials(tmp_path):
    space = load_space(write_space(tmp_path))
    study = run(space, 4, run_dir=tmp_path / "run", workers=2, progress=False, summary=False)
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == len(trials)
    assert 4 <= len(trials) <= 5  # at most one extra trial per worker at the very end
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    arts = [t.user_attrs["checkpoint"] for t in trials]
    assert len(set(arts)) == len(arts)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers
    assert (tmp_path / "run" / "journal.log").is_file()


def test_resume_after_ctrl_c_finishes_the_study_and_retries_the_interrupted_trial(tmp_path):
    space_file = write_space(tmp_path, delay=0.15, epochs=3)
    run_dir = tmp_path / "run"
    code = f"""
        from autogrow.search import load_space, run
        run(load_space({str(space_file)!r}), 3, run_dir={str(run_dir)!r}, progress=False,
            summary=False)
    """
    proc = subprocess.Popen(python(code), env=env())
    try:

        def training_second_trial() -> bool:
            if not (run_dir / "run.json").is_file() or not (run_dir / "journal.log").is_file():
                return False
            t = by_number(open_study(run_dir)).get(1)
            # after epoch 1 of 3: at least one more epoch (~1 s) to interrupt
            return t is not None and t.state == TrialState.RUNNING and "progress" in t.user_attrs

        wait_for(training_second_trial, 120, "trial 1 to finish its first epoch")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) != 0
    finally:
        proc.kill()
    study = open_study(run_dir)
    assert by_number(study)[1].state == TrialState.FAIL
    assert counts(study)["waiting"] == 1  # queued again before the worker stopped

    resumed = subprocess.run(python(code), env=env(), timeout=300)
    assert resumed.returncode == 0
    study = open_study(run_dir)
    trials = by_number(study)
    assert counts(study)["finished"] == 3
    retry = [trials[n] for n in retried_by(study)[1]]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    # resumed from trial 1's last epoch checkpoint
    assert (
        retry[0].user_attrs["resumed_at_epoch"] == trials[1].user_attrs["progress"]["epochs_done"]
    )
    assert retry[0].user_attrs["resumed_at_epoch"] >= 1
    assert retry[0].params == trials[1].params
    assert retry[0].user_attrs["parent"] == trials[1].user_attrs["parent"]
    assert [t.state for t in trials.values()].count(TrialState.FAIL) == 1
    config = json.loads((run_dir / "run.json").read_text())
    assert config["n_trials"] == 3


@pytest.mark.slow  # torchvision ResNet-18: tracing and growing it take ~20 s on 2 cores
def test_imagefolder_template_runs_on_a_tiny_generated_image_folder(tmp_path, monkeypatch):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        for c, name in enumerate(("cats", "dogs")):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(16, 16, 3, generator=gen) * 127 + 128 * c).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    monkeypatch.setenv("AUTOGROW_DATA", str(tmp_path / "images"))
    monkeypatch.setenv("AUTOGROW_IMAGE_SIZE", "32")
    space = load_space(ROOT / "search_spaces" / "imagefolder_template.py")
    study = run(space, 2, run_dir=tmp_path / "run", progress=False, summary=False)
    root, child = study.get_trials()
    assert root.state == TrialState.COMPLETE and root.user_attrs["role"] == "root"
    assert child.state == TrialState.COMPLETE, child.user_attrs.get("fail_reason")
    assert child.user_attrs["params"] > root.user_attrs["params"]
    assert root.user_attrs["train_steps"] == 3  # 3 seed epochs of one 8-image batch


def test_cli_search_then_show_prints_the_best_architecture(tmp_path, capsys):
    from autogrow.cli import main

    space_file = write_space(tmp_path)
    run_dir = tmp_path / "run"
    argv = ["search", str(space_file), "--trials", "3", "--run-dir", str(run_dir)]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best architecture" in out and "Linear(64→" in out
    assert counts(open_study(run_dir))["finished"] == 3
    assert main(["show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "study tiny: best trials" in shown and f"optuna-dashboard {run_dir}" in shown
    # the same study name with --from-scratch: refused, the study was grown, not scratch
    assert main([*argv, "--no-progress", "--study", "tiny", "--from-scratch"]) == 2
    assert "was created with from_scratch=False" in capsys.readouterr().err


def test_multi_objective_search_returns_accuracy_and_params_and_a_pareto_front(tmp_path):
    space = tiny_space(objectives=("accuracy", "params"))
    study = run(space, 4, run_dir=tmp_path / "run", progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t in trials:
        assert t.values == [t.user_attrs["accuracy"], float(t.user_attrs["params"])]
    front = {t.number for t in study.best_trials}
    assert front and all(
        not (u.values[0] >= t.values[0] and u.values[1] <= t.values[1] and u.values != t.values)
        for t in study.best_trials
        for u in trials
    )
    assert (tmp_path / "run" / "pareto.png").is_file()


# -- the report: what a person reads ------------------------------------------------------


def synthetic_study() -> optuna.Study:
    """A finished study without training: a root, two children and a grandchild."""
    from optuna.trial import create_trial

    widen = {"op": "widen", "site": "fc1", "factor": 1.5, "module": "Linear(64→16)"}
    deepen = {"op": "deepen", "site": "layers.2", "kind": "layer", "module": "ReLU"}
    block = {"op": "deepen", "site": "stages.1", "kind": "block", "module": "BasicBlock"}
    rows = [  # parent, plan, accuracy, params, train steps
        (None, [], 0.90, 1000, 100),
        (0, [widen, deepen], 0.93, 1500, 20),
        (0, [block], 0.93, 1500, 20),  # trial 1's accuracy, parameters and steps: one spot
        (1, [deepen], 0.95, 1800, 20),
    ]
    study = optuna.create_study(study_name="synthetic", direction="maximize")
    cumulative: dict[int, int] = {}
    for number, (parent, plan, acc, params, steps) in enumerate(rows):
        cumulative[number] = steps + (0 if parent is None else cumulative[parent])
        attrs = {"parent": parent, "plan": plan, "accuracy": acc, "params": params}
        attrs |= {"train_steps": steps, "cumulative_steps": cumulative[number]}
        attrs["depth"] = 0 if parent is None else 1 + (parent != 0)
        study.add_trial(create_trial(value=acc, user_attrs=attrs))
    return study


def test_sampled_plans_record_each_sites_module_and_the_table_names_it():
    from autogrow.search.growth import sample_plan, seed_sites
    from autogrow.search.models import mlp, small_resnet
    from autogrow.search.report import format_plan

    inputs = (torch.zeros(2, 1, 8, 8),)
    sites = seed_sites(mlp(64, [8, 8], 10), Growth(), inputs)
    params = {"n_ops": 2, "op0": "widen", "op0_widen": "1", "op0_factor": 1.5}
    params |= {"op1": "deepen", "op1_deepen": "4"}
    plan = sample_plan(optuna.trial.FixedTrial(params), Growth(max_ops=2), sites)
    assert plan == [
        {"op": "widen", "site": "1", "factor": 1.5, "module": "Linear(64→8)"},
        {"op": "deepen", "site": "4", "kind": "layer", "module": "ReLU"},
    ]
    assert format_plan(plan) == "widen 1 (Linear) ×1.5, deepen after 4 (ReLU)"
    # a stage of residual blocks: deepen appends a copy of its last block
    net = small_resnet(1, [4, 8], [1, 1], 10)
    sites = seed_sites(net, Growth(widen=[]), (torch.zeros(2, 1, 8, 8),))
    trial = optuna.trial.FixedTrial({"n_ops": 1, "op0": "deepen", "op0_deepen": "stages.1"})
    plan = sample_plan(trial, Growth(widen=[]), sites)
    assert plan == [{"op": "deepen", "site": "stages.1", "kind": "block", "module": "BasicBlock"}]
    assert format_plan(plan) == "deepen stages.1 (+ BasicBlock)"


def test_report_table_names_modules_and_explains_the_operations(tmp_path):
    from rich.console import Console

    from autogrow.search.report import report

    console = Console(file=io.StringIO(), width=100, soft_wrap=True)
    report(synthetic_study(), tmp_path, console=console)
    out = console.file.getvalue()
    assert "growth from parent" in out
    assert "widen fc1 (Linear) ×1.5" in out and "deepen after layers.2 (ReLU)" in out
    assert "deepen stages.1 (+ BasicBlock)" in out
    # the legend: what each site is in the seed, and what each kind of operation does
    assert "fc1 = Linear(64→16), layers.2 = ReLU, stages.1 = BasicBlock" in out
    assert "widen M ×f: M's output units/channels times f" in out
    assert "deepen after M: a new layer after M" in out
    assert "deepen S (+ B): a zeroed copy of stage S's last block B appended" in out


def test_plots_label_lineage_edges_number_pareto_points_and_split_the_steps_axes():
    import matplotlib.pyplot as plt

    from autogrow.search.report import PLOTS, figures

    figs = figures(synthetic_study())
    try:
        assert list(figs) == list(PLOTS)
        (lineage,) = [ax for ax in figs["lineage.png"].axes if ax.get_title().startswith("lin")]
        texts = {t.get_text() for t in lineage.texts}
        # every edge carries its operations; the nodes their trial numbers; a site caption
        assert {"widen fc1 ×1.5\ndeepen after layers.2", "deepen stages.1"} <= texts
        assert "deepen after layers.2" in texts and {"0", "1", "2", "3"} <= texts
        assert any("fc1 = Linear(64→16)" in t for t in texts)

        (pareto,) = figs["pareto.png"].axes
        # every point numbered; trials 1 and 2 share a spot, so they share a label
        assert sorted(t.get_text() for t in pareto.texts) == ["0", "1,2", "3"]
        assert pareto.get_xlabel() == "parameters"

        # two panels, each with its own x quantity
        left, right = figs["steps.png"].axes
        assert "ancestors" in left.get_xlabel() and "whole search" in right.get_xlabel()
        assert "trial" in left.get_title() and "search" in right.get_title()
        assert sorted(t.get_text() for t in left.texts) == ["0", "1,2", "3"]
    finally:
        for fig in figs.values():
            plt.close(fig)
