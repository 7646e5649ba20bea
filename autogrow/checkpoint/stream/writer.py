"""Writing a grown checkpoint shard by shard into a temporary directory that becomes the
output only when complete.

Tensors are assigned to shards of at most ``max_shard_size`` from their planned shapes. A shard
file is written in the safetensors format as a stream: its header first (every name, dtype,
shape and offset is known from the plan), then each tensor's bytes as soon as it is computed
(each from one source tensor), after which it is freed. So the memory a shard needs is that
of its largest tensor, not of the whole shard; files are read back with
``safetensors.safe_open`` like any other (the tests do, and ``from_pretrained``).
The directory is ``.<name>.partial`` beside the output; the index
(``model.safetensors.index.json``) is written last and the directory renamed into place, so
an interrupted run never leaves an output that looks complete. A stale partial directory
left by an interrupted run is removed when the next run starts (runs start clean; they do
not resume).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..recipe import CheckpointError
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
    """One tensor of the output: its name, shape, dtype, and how to compute it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

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


class PartialOutput:
    """The temporary directory beside ``out``; :meth:`commit` renames it to ``out``, and
    :meth:`discard` removes it."""

    def __init__(self, out: Path, *, overwrite: bool) -> None:
        self.out = out
        if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
            raise CheckpointError(
                f"{out} exists and is not an empty directory; choose another output or pass "
                "overwrite=True (--overwrite)"
            )
        self.tmp = out.parent / f".{out.name}.partial"
        if self.tmp.exists():  # left by an interrupted run: start clean
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

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


def stream_safetensors(path: Path, tensors: list[OutputTensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` to the safetensors file ``path``, computing and freeing one at a
    time. The bytes of tensor ``i`` are written by a second thread while tensor ``i + 1`` is
    computed (both release the GIL), so at most two grown tensors are alive at once."""
    with open(path, "wb") as f, ThreadPoolExecutor(max_workers=1) as writer:
        f.write(safetensors_header(tensors, metadata))
        pending: Future[None] | None = None
        try:
            for t in tensors:
                value = _computed(t)
                if pending is not None:
                    pending.result()  # an OSError of the previous write surfaces here
                pending = writer.submit(_write_bytes, f, value, t.nbytes) if value.numel() else None
                del value
            if pending is not None:
                pending.result()
        finally:
            if pending is not None:
                pending.exception()  # wait, so the file is not closed under a running write


def _computed(t: OutputTensor) -> torch.Tensor:
    value = t.make()
    if tuple(value.shape) != t.shape or value.dtype != t.dtype:
        raise CheckpointError(
            f"internal error: {t.name} came out {tuple(value.shape)} {value.dtype}, "
            f"planned {t.shape} {t.dtype}"
        )
    return value.contiguous()


def _write_bytes(f: Any, value: torch.Tensor, nbytes: int) -> None:
    # The tensor's own bytes, not copied (numpy is not needed); ``value`` stays referenced
    # by this call until the write returns.
    f.write((ctypes.c_char * nbytes).from_address(value.data_ptr()))


def write_shards(
    partial: PartialOutput, tensors: list[OutputTensor], max_bytes: int
) -> dict[str, str]:
    """Write ``tensors`` into shards of at most ``max_bytes``; returns name → file. One shard
    gives ``model.safetensors`` (no index needed), several ``model-0000k-of-0000n``."""
    shards = assign_shards(tensors, max_bytes)
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, 1):
        file = WEIGHTS if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        weight_map.update(dict.fromkeys((t.name for t in shard), file))

        def write(path: Path, shard: list[OutputTensor] = shard) -> None:
            stream_safetensors(path, shard, {"format": "pt"})

        partial.write_file(file, write)
    return weight_map


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
