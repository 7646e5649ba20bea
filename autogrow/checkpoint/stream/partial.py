"""The temporary directory a streamed growth writes into, and resuming an interrupted run.

The output is written into ``.<name>.partial`` beside ``out`` and renamed to ``out`` only when
complete, so an interrupted run never leaves an output that looks complete. The directory
holds a small manifest (``.autogrow-stream.json``): the run's fingerprint (a digest of the
source files' names, sizes and modification times, the description file, and every output
tensor's name, shape, dtype and how it is computed: its source tensor and axis maps), and each
shard file completed so far with its size, modification time and tensors. A rerun with the
same fingerprint (same source, same arguments, same seed) keeps those shards and writes the
others; any other partial directory is removed (the run starts clean). A shard is recorded
only after its last byte is written, so a shard cut off by the interruption is written again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..recipe import CheckpointError

MANIFEST = ".autogrow-stream.json"


def fingerprint(*parts: Any) -> str:
    """A digest of ``parts`` (JSON-serialisable, or bytes).

    >>> fingerprint("widen", 2.0) == fingerprint("widen", 2.0) != fingerprint("widen", 3.0)
    True
    """
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def files_identity(root: Path, names: Iterable[str]) -> list[tuple[str, int, int]]:
    """(name, size, modification time in ns) of each file: a source that changed since the
    interrupted run gives another fingerprint."""
    out = []
    for name in sorted(set(names)):
        st = (root / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return out


class PartialOutput:
    """The temporary directory beside ``out``; :meth:`commit` renames it to ``out``, and
    :meth:`discard` removes it. With a ``run_fingerprint``, shards that a previous run with the
    same fingerprint completed are kept (:meth:`completed`); :meth:`record` adds a shard."""

    def __init__(self, out: Path, *, overwrite: bool, run_fingerprint: str | None = None) -> None:
        self.out = out
        if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
            raise CheckpointError(
                f"{out} exists and is not an empty directory; choose another output or pass "
                "overwrite=True (--overwrite)"
            )
        self.tmp = out.parent / f".{out.name}.partial"
        self.fingerprint = run_fingerprint
        self.done: dict[str, dict[str, Any]] = {}
        previous = self._manifest() if self.tmp.is_dir() else None
        if run_fingerprint is not None and previous is not None:
            if previous.get("fingerprint") == run_fingerprint:
                self.done = dict(previous.get("files") or {})
        if not self.done and self.tmp.exists():  # another run's leftovers: start clean
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._save()

    def _manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.tmp / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _save(self) -> None:
        if self.fingerprint is None:
            return
        data = {"fingerprint": self.fingerprint, "files": self.done}
        staged = self.tmp / f"{MANIFEST}.tmp"
        staged.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(staged, self.tmp / MANIFEST)  # never a half-written manifest

    def completed(self, name: str, tensors: list[str]) -> bool:
        """Whether the file ``name`` holding ``tensors`` was completed by a previous run with
        the same fingerprint and is unchanged since (its size and modification time)."""
        entry = self.done.get(name)
        try:
            st = (self.tmp / name).stat()
        except OSError:
            return False
        return (
            entry is not None
            and entry.get("tensors") == tensors
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
        )

    def record(self, name: str, tensors: list[str]) -> None:
        """Note the file ``name`` (holding ``tensors``) as complete in the manifest."""
        st = (self.tmp / name).stat()
        self.done[name] = {"tensors": tensors, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self._save()

    def write_file(self, name: str, write: Callable[[Path], None]) -> None:
        """Run ``write(path)`` for ``name`` in the temporary directory; an OSError (a full
        disk) removes the partial output and raises CheckpointError naming the file."""
        path = self.tmp / name
        try:
            write(path)
        except (OSError, SafetensorError) as e:
            self.discard()
            full = isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space" in str(e)
            why = "the disk is full" if full else f"{type(e).__name__}: {e}"
            raise CheckpointError(
                f"cannot write {self.out / name} ({why}); the partial output was removed and "
                "the source is untouched"
            ) from e

    def commit(self) -> Path:
        (self.tmp / MANIFEST).unlink(missing_ok=True)
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.replaced"
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
