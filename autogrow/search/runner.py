"""Running a growth search: storage, local worker processes, resuming and retrying trials.

Storage: by default an Optuna ``JournalFileBackend`` file (``<run_dir>/journal.log``), safe for
several processes on one machine. An RDB URL (``postgresql://...``) is for several machines;
it gets a heartbeat and ``RetryHeartbeatStaleTrialCallback``, so the trial of a worker that
died is queued again and resumed from its last checkpoint by whichever worker takes it.
Workers may start together on an empty database: creating the tables and the study is
serialised by a PostgreSQL advisory lock (other RDBs: retried when it collides).

``n_trials`` is the study's total: a trial counts once it is complete, pruned, or failed
cleanly (growth refused, over the limits). Re-running the same command resumes the study:
trials of local workers that died or were interrupted (Ctrl-C) are queued again first.
Every worker stops taking new trials once the finished and running trials reach the total;
with several machines, at most one extra trial per worker can start at the very end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..errors import AutogrowError, InvalidArgumentError
from .objective import GrowthObjective
from .space import SearchSpace, load_space
from .storage import (  # noqa: F401 - make_storage and the start-up lock, re-exported
    MAX_RETRY,
    SETUP_ATTEMPTS,
    SETUP_LOCK_KEY,
    SETUP_LOCK_TIMEOUT,
    _serialised,
    _with_driver,
    artifact_store,
    make_storage,
)

RUN_FILE = "run.json"


def run(
    space: SearchSpace,
    n_trials: int = 20,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    run_dir: str | Path | None = None,
    workers: int = 1,
    from_scratch: bool = False,
    heartbeat: int = 30,
    progress: bool = True,
    summary: bool = True,
) -> optuna.Study:
    """Run (or resume) a growth search until the study has ``n_trials`` finished trials.

    Args:
        space: the search space (:func:`autogrow.search.load_space` reads one from a file;
            ``workers > 1`` needs that, since worker processes load it again).
        n_trials: the study's total number of trials (not the number to add).
        storage: None for a journal file under ``run_dir``, or an RDB URL
            (``postgresql://user:pw@host/db``); every machine runs the same command.
        study_name: default ``space.name`` (``+ "-scratch"`` with ``from_scratch``).
        run_dir: where the journal, the artifacts (checkpoints) and the plots go; default
            ``runs/<study_name>``. With an RDB on several machines, put the artifacts on a
            shared file system (the same ``run_dir`` everywhere).
        workers: local worker processes (1: run in this process).
        from_scratch: the baseline: children keep the grown architecture but start from
            random weights; every trial, the root included, trains ``training.epochs``.
        heartbeat: RDB heartbeat interval in seconds (a trial is stale after 3 intervals).
        progress: show a progress bar.
        summary: print the summary table and write the plots under ``run_dir`` at the end.

    Returns:
        the Optuna study.

    .. code-block:: python

        from autogrow.search import load_space, run
        study = run(load_space("search_spaces/digits_mlp.py"), n_trials=10)
        print(study.best_trial.user_attrs["architecture"])
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise InvalidArgumentError(f"n_trials must be an int >= 1, got {n_trials!r}")
    if not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError(f"workers must be an int >= 1, got {workers!r}")
    if workers > 1 and space.source is None:
        raise InvalidArgumentError(
            "workers > 1 starts worker processes that load the search space again from its "
            "file: load it with autogrow.search.load_space(path), or use workers=1"
        )
    study_name = study_name or (space.name + ("-scratch" if from_scratch else ""))
    run_dir = Path(run_dir or Path("runs") / study_name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "study": study_name,
        "storage": storage,
        "space": space.source,
        "run_dir": str(run_dir),
        "n_trials": n_trials,
        "from_scratch": from_scratch,
        "heartbeat": heartbeat,
    }
    study = _start(space, config)
    _write_run_file(run_dir, config)

    bar = _progress(n_trials, study, progress)
    verbosity = optuna.logging.get_verbosity()
    if progress:  # the bar replaces Optuna's per-trial log lines
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if workers == 1:
            _work(space, config, worker_id=0, on_trial=bar.update_from)
        else:
            _supervise(study, config, workers, bar)
    finally:
        bar.close()
        optuna.logging.set_verbosity(verbosity)
    if summary:
        from .report import report

        report(study, run_dir)
    return study


# --------------------------------------------------------------------------------------------
# storage and study
# --------------------------------------------------------------------------------------------


def _start(space: SearchSpace, config: dict[str, Any]) -> optuna.Study:
    """Create or load the study and queue again its lost trials: the start-up of :func:`run`.

    On an RDB, processes starting at the same moment on several machines take turns.
    """

    def start() -> optuna.Study:
        study = _create_study(space, config)
        recover(study, local_running=config["storage"] is None, interrupted=True)
        return study

    url = config["storage"]
    return _serialised(None if url is None else _with_driver(url), start)


def _write_run_file(run_dir: Path, config: dict[str, Any]) -> None:
    # Written whole (several processes may start at once), once the study exists: whoever
    # finds it can open the study (open_study).
    tmp = run_dir / f"{RUN_FILE}.{socket.gethostname()}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


def _create_study(space: SearchSpace, config: dict[str, Any]) -> optuna.Study:
    storage = make_storage(config["storage"], Path(config["run_dir"]), config["heartbeat"])
    study = optuna.create_study(
        study_name=config["study"],
        storage=storage,
        directions=list(space.directions),
        load_if_exists=True,
    )
    attrs = study.user_attrs
    mine = {"from_scratch": config["from_scratch"], "objectives": list(space.objectives)}
    for key, value in mine.items():
        if key in attrs and attrs[key] != value:
            raise InvalidArgumentError(
                f"study {config['study']!r} was created with {key}={attrs[key]!r}, not "
                f"{value!r}; use another --study name (or run directory) for this search"
            )
        if key not in attrs:
            study.set_user_attr(key, value)
    return study


def _load_study(space: SearchSpace, config: dict[str, Any], worker_id: int) -> optuna.Study:
    storage = make_storage(config["storage"], Path(config["run_dir"]), config["heartbeat"])
    return optuna.load_study(
        study_name=config["study"],
        storage=storage,
        sampler=_sampler(space, worker_id),
        pruner=_pruner(space),
    )


def _sampler(space: SearchSpace, worker_id: int) -> optuna.samplers.BaseSampler:
    # constant_liar: parallel workers do not all sample the same point while trials run
    return optuna.samplers.TPESampler(seed=space.seed_value + worker_id, constant_liar=True)


def _pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    epochs = space.training.epochs
    if space.multi_objective or space.pruner == "none":
        return optuna.pruners.NopPruner()
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def open_study(run_dir: str | Path) -> optuna.Study:
    """The study of the search whose run directory is ``run_dir`` (from its ``run.json``)."""
    run_dir = Path(run_dir).resolve()
    f = run_dir / RUN_FILE
    if not f.is_file():
        raise InvalidArgumentError(
            f"{run_dir} has no {RUN_FILE}: not the run directory of an autogrow search "
            "(autogrow search --run-dir DIR writes one)"
        )
    config = json.loads(f.read_text())
    storage = make_storage(config.get("storage"), run_dir, config.get("heartbeat", 30))
    return optuna.load_study(study_name=config["study"], storage=storage)


# --------------------------------------------------------------------------------------------
# counting, recovering, retrying
# --------------------------------------------------------------------------------------------


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by what they mean for the total: finished, running, waiting, lost (to retry)."""
    out = {"finished": 0, "running": 0, "waiting": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            out["finished"] += 1
        elif t.state == TrialState.FAIL and "fail_reason" in t.user_attrs:
            out["finished"] += 1
            out["failed"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
    return out


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Queue ``trial`` again with its parameters and lineage (as the heartbeat callback does)."""
    before = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    return len(study.get_trials(deepcopy=False)) > before


def recover(study: optuna.Study, *, local_running: bool, interrupted: bool) -> list[int]:
    """Queue again the trials that were lost; returns their numbers.

    ``local_running``: RUNNING trials whose worker process on this machine no longer exists
    are marked FAIL and retried (journal storage; an RDB's heartbeat does this itself).
    ``interrupted``: FAIL trials without a ``fail_reason`` (interrupted, crashed) that no
    trial retries yet are retried. Call it from one process per machine.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    host = socket.gethostname()
    lost = []
    for t in trials:
        if t.number in retried:
            continue
        if local_running and t.state == TrialState.RUNNING:
            worker_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
            if worker_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):
                continue  # finished meanwhile
        elif not (interrupted and t.state == TrialState.FAIL and "fail_reason" not in t.user_attrs):
            continue
        if retry(study, t):
            lost.append(t.number)
    return lost


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------------


class _NoTracebackForAutogrowErrors(logging.Filter):
    """Drop the traceback Optuna logs with a caught AutogrowError.

    A refused growth or a child over ``max_params`` is an expected outcome of a trial; the
    one-line message and the trial's ``fail_reason`` say what happened.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], AutogrowError):
            record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def _quiet_refusals():
    # Optuna logs failed trials from this module's logger; filter there, for every handler.
    logger = logging.getLogger("optuna.study._optimize")
    f = _NoTracebackForAutogrowErrors()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def _work(space: SearchSpace, config: dict[str, Any], worker_id: int, on_trial: Any = None) -> None:
    """Take trials until the study has ``n_trials`` finished ones (one worker's loop)."""
    with _quiet_refusals():
        _work_loop(space, config, worker_id, on_trial)


def _work_loop(space: SearchSpace, config: dict[str, Any], worker_id: int, on_trial: Any) -> None:
    study = _load_study(space, config, worker_id)
    objective = GrowthObjective(
        space, artifact_store(Path(config["run_dir"])), from_scratch=config["from_scratch"]
    )
    n_trials = config["n_trials"]
    me = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        with warnings.catch_warnings():  # experimental since Optuna 2.9, stable in practice
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # RDB heartbeat: retries dead workers' trials
        c = counts(study)
        if c["finished"] >= n_trials:
            return
        if c["finished"] + c["running"] >= n_trials and c["waiting"] == 0:
            time.sleep(0.5)  # the last trials are running elsewhere; one of them may die
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(AutogrowError,))
        except KeyboardInterrupt:
            # Optuna marked the trial FAIL; queue it again so a re-run resumes it.
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                if t.user_attrs.get("worker") == me and "fail_reason" not in t.user_attrs:
                    recover_one(study, t)
            raise
        if on_trial is not None:
            on_trial()


def recover_one(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Retry ``trial`` unless some trial already retries it."""
    retried = {
        n for t in study.get_trials(deepcopy=False) for n in t.system_attrs.get("retry_history", [])
    }
    if trial.number not in retried:
        retry(study, trial)


def _supervise(study: optuna.Study, config: dict[str, Any], workers: int, bar: Any) -> None:
    """Start ``workers`` processes, recover the trials of any that die, wait for all."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "autogrow.search.runner", json.dumps({**config, "worker": i})],
            env=env,
        )
        for i in range(workers)
    ]
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            if config["storage"] is None:
                recover(study, local_running=True, interrupted=False)
            bar.update_from()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the workers too (same process group); give them a
        # moment, then pass SIGINT on to any that did not get it. Each queues its trial again.
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        raise AutogrowError(
            f"{len(bad)} of {workers} worker processes exited with status {bad}; their trials "
            "were queued again: run the same command to finish the study"
        )


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of a worker process: ``python -m autogrow.search.runner '<config json>'``."""
    config = json.loads(argv[0])
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(config["space"])
    try:
        _work(space, config, worker_id=int(config["worker"]))
    except KeyboardInterrupt:
        return 130
    return 0


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------


class _Bar:
    def __init__(self, total: int, study: optuna.Study, show: bool) -> None:
        self.study = study
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"search {study.study_name}", unit="trial")
            self.update_from()

    def update_from(self) -> None:
        if self.bar is None:
            return
        c = counts(self.study)
        self.bar.n = min(c["finished"], self.bar.total)
        best = _best_accuracy(self.study)
        self.bar.set_postfix(best=f"{best:.4f}" if best is not None else "-", run=c["running"])
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(total: int, study: optuna.Study, show: bool) -> _Bar:
    return _Bar(total, study, show)


def _best_accuracy(study: optuna.Study) -> float | None:
    accs = [
        t.user_attrs["accuracy"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "accuracy" in t.user_attrs
    ]
    return max(accs) if accs else None


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
