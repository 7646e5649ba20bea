"""The growth search on a real PostgreSQL server, with workers that start at the same moment.

The server is ``pgserver`` (PostgreSQL binaries in a pip wheel, in the dev extra), started once
in a temporary directory; every test gets new, empty databases. Workers started together on
an empty database must all get through Optuna's schema and study creation (they take turns
under an advisory lock). A worker SIGKILLed mid-trial must have its trial retried by the
others through the RDB heartbeat (``RetryHeartbeatStaleTrialCallback``), resumed from its
epoch checkpoint, and the study must finish with no trial lost.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time

import pytest
from optuna.trial import TrialState
from test_search import by_number, env, python, retried_by, wait_for, write_space

from autogrow.search.runner import counts, make_storage, open_study

_names = itertools.count()


@pytest.fixture(scope="module")
def pg_server():
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
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def new_database(server) -> str:
    """The URL of a new, empty database on ``server``: no tables, no study."""
    from sqlalchemy.engine import make_url

    name = f"autogrow_{next(_names)}"
    server.psql(f"CREATE DATABASE {name};")
    return make_url(server.get_uri()).set(database=name).render_as_string(hide_password=False)


def start_together(tmp_path, code: str, n: int, rounds: int = 1) -> list[subprocess.Popen]:
    """Start ``n`` processes; each runs ``code`` once per round, all of them at one moment.

    A process imports everything, says it is ready, waits for the go of the round, runs
    ``code`` (with ``ROUND`` set), and so on: the start-ups collide as they would on machines
    started together, not seconds apart as imports finish.
    """
    sync = tmp_path / "sync"
    sync.mkdir()
    worker = f"""
        import os, sys, time
        from pathlib import Path
        import autogrow.search, autogrow.search.runner
        sync, me = Path({str(sync)!r}), sys.argv[1]
        for ROUND in range({rounds}):
            (sync / f"ready-{{ROUND}}-{{me}}").touch()
            while not (sync / f"go-{{ROUND}}").exists():
                time.sleep(0.001)
    """
    worker = python(textwrap.dedent(worker) + textwrap.indent(textwrap.dedent(code), " " * 4))
    procs = [subprocess.Popen([*worker, str(i)], env=env()) for i in range(n)]
    try:
        for k in range(rounds):

            def ready(k=k) -> bool:
                for p in procs:
                    assert p.poll() is None, f"a worker exited with status {p.returncode}"
                return len(list(sync.glob(f"ready-{k}-*"))) == n

            wait_for(ready, 120, f"{n} workers ready for round {k}")
            (sync / f"go-{k}").touch()
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs


@pytest.mark.slow  # four processes, three new databases: about 20 s on 2 cores
def test_postgres_workers_starting_together_on_new_databases(tmp_path, pg_server):
    import optuna

    space_file = write_space(tmp_path)
    urls = [new_database(pg_server) for _ in range(3)]
    code = f"""
        space = autogrow.search.load_space({str(space_file)!r})
        config = dict(study="s", storage={urls!r}[ROUND], space=space.source,
                      run_dir={str(tmp_path / "run")!r}, n_trials=1, from_scratch=False,
                      heartbeat=1)
        autogrow.search.runner._start(space, config)  # run()'s start-up
    """
    procs = start_together(tmp_path, code, n=4, rounds=len(urls))
    try:
        assert [p.wait(120) for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            p.kill()
    for url in urls:
        (summary,) = optuna.get_all_study_summaries(make_storage(url, tmp_path))
        assert summary.study_name == "s" and summary.n_trials == 0
        assert summary.user_attrs == {"from_scratch": False, "objectives": ["accuracy"]}


@pytest.mark.slow  # three worker processes and a server: about a minute on 2 cores
def test_postgres_workers_retry_the_trial_of_a_killed_worker(tmp_path, pg_server):
    url = new_database(pg_server)
    space_file = write_space(tmp_path, delay=0.15, epochs=3)
    run_dir = tmp_path / "run"
    code = f"""
        autogrow.search.run(autogrow.search.load_space({str(space_file)!r}), 6, storage={url!r},
                            study_name="pg", run_dir={str(run_dir)!r}, heartbeat=1,
                            progress=False, summary=False)
    """
    procs = start_together(tmp_path, code, n=3)
    victim = procs[2]
    try:

        def victim_mid_trial() -> bool:
            for p in procs:
                assert p.poll() is None, f"a worker exited with status {p.returncode}"
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
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.COMPLETE) == len(states) - 1


def test_start_up_is_retried_on_errors_of_a_concurrent_start_up(monkeypatch):
    """Without an advisory lock (MySQL, SQLite), a start-up that collides is tried again."""
    import optuna
    import sqlalchemy.exc

    from autogrow.search import runner

    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    collisions = [
        sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, "table studies already exists"),
        sqlalchemy.exc.IntegrityError("INSERT", {}, "UNIQUE constraint failed: version_info.id"),
    ]
    wrapped = optuna.exceptions.StorageInternalError("during the commit")
    wrapped.__cause__ = collisions[1]
    calls = []

    def start(errors):
        def fn():
            calls.append(1)
            if len(calls) <= len(errors):
                raise errors[len(calls) - 1]
            return "study"

        return fn

    assert runner._serialised("sqlite:///x.db", start([*collisions, wrapped])) == "study"
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password"):
        runner._serialised(
            "mysql://u@h/db",
            start([sqlalchemy.exc.OperationalError("connect", {}, "password authentication")]),
        )
    assert len(calls) == 1  # not a collision: not retried
    calls.clear()
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        runner._serialised("sqlite:///x.db", start(collisions[1:] * runner.SETUP_ATTEMPTS))
    assert len(calls) == runner.SETUP_ATTEMPTS
