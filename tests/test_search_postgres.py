"""The growth search on a real PostgreSQL server: three workers, one SIGKILLed mid-trial.

The server is ``pgserver`` (PostgreSQL binaries in a pip wheel, in the dev extra), started in a
temporary directory. The killed worker's trial must be retried by the others through the
RDB heartbeat (``RetryHeartbeatStaleTrialCallback``), resume from its epoch checkpoint, and
the study must finish with no trial lost.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from optuna.trial import TrialState
from test_search import by_number, env, python, retried_by, wait_for, write_space

from autogrow.search.runner import counts, make_storage, open_study


@pytest.fixture
def postgres_url():
    try:
        import pgserver
    except ImportError:
        pytest.fail(
            "this test needs a PostgreSQL server from the pgserver package, which the dev "
            "extra installs: pip install -c constraints.txt -e '.[dev]'"
        )
    # Run as root, pgserver starts PostgreSQL as another user, which cannot enter pytest's
    # private tmp_path; a fresh directory directly under the system temp dir works.
    data = tempfile.mkdtemp(prefix="autogrow-pg-")
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow  # three worker processes and a server: about a minute on 2 cores
def test_postgres_workers_retry_the_trial_of_a_killed_worker(tmp_path, postgres_url):
    import optuna

    space_file = write_space(tmp_path, delay=0.15, epochs=3)
    run_dir = tmp_path / "run"
    # Create the tables and the study once, before the workers race to do it.
    storage = make_storage(postgres_url, run_dir, heartbeat=1)
    optuna.create_study(study_name="pg", storage=storage, direction="maximize")
    code = f"""
        from autogrow.search import load_space, run
        run(load_space({str(space_file)!r}), 6, storage={postgres_url!r}, study_name="pg",
            run_dir={str(run_dir)!r}, heartbeat=1, progress=False, summary=False)
    """
    procs = [subprocess.Popen(python(code), env=env()) for _ in range(3)]
    victim = procs[2]
    try:

        def victim_mid_trial() -> bool:
            if not (run_dir / "run.json").is_file():
                return False
            for t in open_study(run_dir).get_trials(deepcopy=False):
                if (
                    t.state == TrialState.RUNNING
                    and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                    and "progress" in t.user_attrs
                ):
                    return True
            return False

        wait_for(victim_mid_trial, 180, "the third worker to be half-way through a trial")
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        for p in procs[:2]:
            assert p.wait(300) == 0
    finally:
        for p in procs:
            p.kill()
    time.sleep(0.1)
    study = open_study(run_dir)
    trials = by_number(study)
    killed = [
        t for t in trials.values() if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
    ]
    dead = [t for t in killed if t.state != TrialState.COMPLETE]
    assert len(dead) == 1 and dead[0].state == TrialState.FAIL
    retries = [trials[n] for n in retried_by(study).get(dead[0].number, [])]
    assert len(retries) == 1, retries
    assert retries[0].state == TrialState.COMPLETE
    # resumed from the dead trial's last epoch checkpoint
    assert (
        retries[0].user_attrs["resumed_at_epoch"] == dead[0].user_attrs["progress"]["epochs_done"]
    )
    assert retries[0].user_attrs["resumed_at_epoch"] >= 1
    assert retries[0].params == dead[0].params
    assert counts(study)["finished"] in (6, 7)  # two live workers: at most one extra at the end
    states = [t.state for t in trials.values()]
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.COMPLETE) == len(states) - 1
