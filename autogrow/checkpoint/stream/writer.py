"""Writing a grown checkpoint shard by shard into a temporary directory that becomes the
output only when complete (:class:`~.partial.PartialOutput`, which also lets a rerun resume).

Tensors are assigned to shards of at most ``max_shard_size`` from their planned shapes. A shard
file is written in the safetensors format as a stream: its header first (every name, dtype,
shape and offset is known from the plan), then each tensor's bytes at its offset as soon as it
is computed (each from one source tensor), after which its buffer is reused. So the memory a
shard needs is that of its largest tensors in flight, not of the whole shard; files are read
back with ``safetensors.safe_open`` like any other (the tests do, and ``from_pretrained``).
The index (``model.safetensors.index.json``) is written last.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..recipe import CheckpointError
from .grow import Grown
from .partial import PartialOutput
from .source import INDEX, WEIGHTS

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"2GB"`` (10**9) or ``"500MiB"``
    (2**20), as transformers' ``max_shard_size`` reads it.

    >>> parse_size("2GB"), parse_size("50KB"), parse_size("1MiB"), parse_size(100)
    (2000000000, 50000, 1048576, 100)
    """
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise CheckpointError(
            f"max_shard_size must be a positive number of bytes or a size such as '2GB' or "
            f"'500MiB', got {size!r}"
        )
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the output: its name, shape, dtype, and how to compute it: ``make(buffer)``
    returns the tensor or a :class:`~.grow.Grown`; ``buffer`` is a reusable uint8 tensor of at
    least ``scratch`` bytes (None when ``scratch`` is 0) that the result may live in until
    it is written. ``key`` describes how it is computed, for resuming (see
    :mod:`~.partial`)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[torch.Tensor | None], torch.Tensor | Grown]
    scratch: int = 0
    key: str = ""  # how it is computed (source tensor, axis maps): part of a run's fingerprint

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def assign_shards(tensors: list[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    """Consecutive tensors packed into shards of at most ``max_bytes`` (a tensor larger than
    that gets a shard of its own), as ``save_pretrained`` does."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return [s for s in shards if s]


_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def safetensors_header(tensors: list[OutputTensor], metadata: dict[str, str]) -> bytes:
    """The header of a safetensors file holding ``tensors`` in this order: its 8-byte
    little-endian length, then the JSON, padded with spaces to a multiple of 8 bytes."""
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def stream_safetensors(
    path: Path, tensors: list[OutputTensor], metadata: dict[str, str], pipeline: Pipeline
) -> None:
    """Write ``tensors`` to the safetensors file ``path``: the header, then each tensor's
    bytes at its offset as soon as ``pipeline`` has grown it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        header = safetensors_header(tensors, metadata)
        _pwrite_all(fd, [memoryview(header)], 0)
        placed, offset = [], len(header)
        for t in tensors:
            placed.append((t, offset))
            offset += t.nbytes
        pipeline.run(fd, placed)
    finally:
        os.close(fd)


class Pipeline:
    """Grows tensors in ``workers`` threads and writes them, in order, in one more thread
    (numpy's gathers, torch's arithmetic and the writes release the GIL, so they use as many
    cores). At most ``workers + 1`` grown tensors are alive at once, each in one of as many
    reusable buffers of the largest ``scratch`` (allocated once: a fresh allocation per
    tensor costs more in page faults than the gather)."""

    def __init__(self, tensors: list[OutputTensor], workers: int) -> None:
        self.workers = workers
        self.capacity = max((t.scratch for t in tensors), default=0)
        self.free: queue.SimpleQueue[torch.Tensor | None] = queue.SimpleQueue()
        for _ in range(workers + 1):
            self.free.put(None)  # allocated when first used
        self.growers = ThreadPoolExecutor(workers, thread_name_prefix="autogrow-grow")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="autogrow-write")

    def close(self) -> None:
        self.growers.shutdown()
        self.writer.shutdown()

    def _buffer(self) -> torch.Tensor | None:
        buffer = self.free.get()  # waits until a write has finished with one
        if buffer is None and self.capacity:
            buffer = torch.empty(self.capacity, dtype=torch.uint8)
        return buffer

    def run(self, fd: int, placed: list[tuple[OutputTensor, int]]) -> None:
        """Grow and write each (tensor, file offset) of ``placed``; returns once all are
        written, raising the first error (after every started write has ended)."""
        growing: deque[tuple[OutputTensor, int, torch.Tensor | None, Future[Grown]]] = deque()
        writing: deque[Future[None]] = deque()
        try:
            for t, offset in placed:
                buffer = self._buffer()
                growing.append((t, offset, buffer, self.growers.submit(_computed, t, buffer)))
                while growing and (growing[0][3].done() or len(growing) > self.workers):
                    self._hand_over(fd, growing.popleft(), writing)
                while writing and writing[0].done():
                    writing.popleft().result()  # an OSError of a write surfaces here
            while growing:
                self._hand_over(fd, growing.popleft(), writing)
            while writing:
                writing.popleft().result()
        finally:  # never leave a thread writing to a closed file or into a reused buffer
            for *_, buffer, future in growing:
                future.exception()
                self.free.put(buffer)
            for future in writing:
                future.exception()

    def _hand_over(
        self,
        fd: int,
        item: tuple[OutputTensor, int, torch.Tensor | None, Future[Grown]],
        writing: deque[Future[None]],
    ) -> None:
        t, offset, buffer, future = item
        try:
            grown = future.result()
        except BaseException:
            self.free.put(buffer)
            raise
        writing.append(self.writer.submit(self._write, fd, offset, grown, buffer))

    def _write(self, fd: int, offset: int, grown: Grown, buffer: torch.Tensor | None) -> None:
        try:
            if grown.value.numel():
                _pwrite_all(fd, _row_buffers(grown), offset)
        finally:
            self.free.put(buffer)


def _computed(t: OutputTensor, buffer: torch.Tensor | None) -> Grown:
    value = t.make(buffer)
    grown = value if isinstance(value, Grown) else Grown(value.contiguous())
    if grown.shape != t.shape or grown.value.dtype != t.dtype:
        raise CheckpointError(
            f"internal error: {t.name} came out {grown.shape} {grown.value.dtype}, "
            f"planned {t.shape} {t.dtype}"
        )
    return grown


def _row_buffers(grown: Grown) -> list[memoryview]:
    """The bytes of ``grown`` as buffers in file order, without copying: its tensor's bytes,
    or, when rows are named, one buffer per run of consecutive rows."""
    value = grown.value
    flat = (ctypes.c_char * (value.numel() * value.element_size())).from_address(value.data_ptr())
    whole = memoryview(flat).cast("B")
    if grown.rows is None:
        return [whole]
    if not len(grown.rows):
        return []
    row = whole.nbytes // max(1, value.shape[0])
    rows = grown.rows.tolist()
    out, start, prev = [], rows[0], rows[0]
    for r in rows[1:]:
        if r != prev + 1:
            out.append(whole[start * row : (prev + 1) * row])
            start = r
        prev = r
    out.append(whole[start * row : (prev + 1) * row])
    return out


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _pwrite_all(fd: int, buffers: list[memoryview], offset: int) -> None:
    """Write ``buffers`` one after the other at ``offset``, in calls of at most IOV_MAX
    buffers, resuming after a short write."""
    i = 0
    while i < len(buffers):
        batch = buffers[i : i + _IOV_MAX]
        done = os.pwritev(fd, batch, offset)
        offset += done
        for b in batch:  # skip what was written; a partly written buffer is resumed
            if done >= b.nbytes:
                done -= b.nbytes
                i += 1
            else:
                buffers[i] = b[done:]
                break


def write_shards(
    partial: PartialOutput, tensors: list[OutputTensor], max_bytes: int
) -> tuple[dict[str, str], int]:
    """Write ``tensors`` into shards of at most ``max_bytes``; returns (name → file, how many
    shards an interrupted run had completed and were kept). One shard gives
    ``model.safetensors`` (no index needed), several ``model-0000k-of-0000n``. Each shard is
    recorded in ``partial``'s manifest once written."""
    shards = assign_shards(tensors, max_bytes)
    weight_map: dict[str, str] = {}
    kept = 0
    pipeline = Pipeline(tensors, workers=grow_workers())
    try:
        for k, shard in enumerate(shards, 1):
            file = (
                WEIGHTS if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            )
            names = [t.name for t in shard]
            weight_map.update(dict.fromkeys(names, file))
            if partial.completed(file, names):
                kept += 1
                continue

            def write(path: Path, shard: list[OutputTensor] = shard) -> None:
                stream_safetensors(path, shard, {"format": "pt"}, pipeline)

            partial.write_file(file, write)
            partial.record(file, names)
    finally:
        pipeline.close()
    return weight_map, kept


def grow_workers() -> int:
    """Threads growing tensors while another writes: one on a machine of two cores or fewer
    (the writer needs the other), else two; more would add a buffer of the largest grown
    tensor each for little gain, since the writes bound the time. ``AUTOGROW_GROW_WORKERS``
    overrides it."""
    env = os.environ.get("AUTOGROW_GROW_WORKERS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return 1 if (os.cpu_count() or 1) <= 2 else 2


def write_index(partial: PartialOutput, weight_map: dict[str, str], total: int) -> None:
    """The index of a sharded output (nothing for a single file), written last."""
    if len(set(weight_map.values())) < 2:
        return
    data = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}

    def write(path: Path) -> None:
        path.write_text(json.dumps(data, indent=2) + "\n")

    partial.write_file(INDEX, write)


def copy_files(src: Path, partial: PartialOutput, skip: Iterable[str]) -> None:
    """Copy the source's other files (tokenizer, generation config, README) as they are."""
    skipped = set(skip) | {INDEX}
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in skipped and not f.name.endswith(".safetensors"):
            partial.write_file(f.name, lambda path, f=f: shutil.copy2(f, path))
