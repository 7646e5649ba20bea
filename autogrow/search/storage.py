"""Where a growth search keeps its study: journal file or RDB storage, start-up safe for
workers that start together on an empty database, and the artifact store for checkpoints.

PostgreSQL start-up (creating the tables and the study) is serialised by an advisory lock on
its own connection; other RDBs retry when two start-ups collide.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from ..errors import AutogrowError, InvalidArgumentError

MAX_RETRY = 3  # how often a trial whose worker died is queued again


def make_storage(storage: str | None, run_dir: Path, heartbeat: int = 30) -> Any:
    """A JournalStorage on ``<run_dir>/journal.log`` (None), or an RDBStorage with heartbeat."""
    if storage is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(run_dir / "journal.log")))
    if "://" not in storage:
        raise InvalidArgumentError(
            f"storage must be an RDB URL such as postgresql://user:password@host/db, got "
            f"{storage!r} (leave it out for the journal file under the run directory)"
        )
    url = _with_driver(storage)

    def create() -> Any:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )

    # Creating the storage creates Optuna's tables in a new database.
    return _serialised(url, create)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the psycopg2 driver of the postgres extra when psycopg 3 is absent.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3.

    >>> _with_driver("sqlite:///x.db")
    'sqlite:///x.db'
    """
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


# Start-up on an RDB. Optuna creates its tables, its schema version and a study with plain
# CREATE and INSERT statements: processes doing that at the same moment on a new database fail
# with DuplicateTable ('relation "studies" already exists') or UniqueViolation (the
# ``studydirection`` type). On PostgreSQL they take turns under an advisory lock; on other
# databases (MySQL, SQLite) a start-up that fails with such an error is retried.

SETUP_LOCK_KEY = int.from_bytes(b"autogrow", "big")  # pg_advisory_lock's bigint key
SETUP_LOCK_TIMEOUT = 600  # seconds a process waits for the others' start-up
SETUP_ATTEMPTS = 5
_setup_lock_held = threading.local()


def _serialised(url: str | None, fn: Any) -> Any:
    """``fn()`` under :func:`_setup_lock`, retried while it fails as a concurrent start-up.

    ``url`` None (the journal file) calls ``fn()`` alone. Nested calls in one thread reuse the
    lock the outer call holds.
    """
    if url is None:
        return fn()
    for attempt in range(SETUP_ATTEMPTS):
        try:
            with _setup_lock(url):
                return fn()
        except Exception as e:
            if attempt == SETUP_ATTEMPTS - 1 or not _is_setup_race(e):
                raise
        time.sleep(random.uniform(0.1, 0.5) * 2**attempt)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _setup_lock(url: str):
    """Hold a PostgreSQL session advisory lock on the database of ``url`` (other URLs: none).

    The lock belongs to a connection of its own, so it is released when the process dies.
    """
    if getattr(_setup_lock_held, "depth", 0) or not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(
                sqlalchemy.text("SELECT set_config('lock_timeout', :t, false)"),
                {"t": f"{SETUP_LOCK_TIMEOUT}s"},
            )
            try:
                conn.execute(
                    sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SETUP_LOCK_KEY}
                )
            except sqlalchemy.exc.OperationalError as e:
                raise AutogrowError(
                    f"waited {SETUP_LOCK_TIMEOUT} s for another process to finish its start-up "
                    f"on this database (PostgreSQL advisory lock {SETUP_LOCK_KEY}): {e.orig}"
                ) from e
            _setup_lock_held.depth = 1
            try:
                yield
            finally:
                _setup_lock_held.depth = 0
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    conn.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                        {"key": SETUP_LOCK_KEY},
                    )
    finally:
        engine.dispose()


def _is_setup_race(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is another process's table, type or row appearing."""
    import sqlalchemy.exc

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.IntegrityError):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and any(
            m in str(exc) for m in ("already exists", "database is locked")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def artifact_store(run_dir: Path) -> Any:
    """The filesystem artifact store under ``<run_dir>/artifacts`` (checkpoints)."""
    from optuna.artifacts import FileSystemArtifactStore

    (run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(run_dir / "artifacts"))
