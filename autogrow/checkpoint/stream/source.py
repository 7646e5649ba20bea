"""Reading a sharded safetensors checkpoint directory lazily: which tensor lives in which file,
its shape and dtype (from the file headers, no tensor data read), and one tensor at a time.

A directory holds either ``model.safetensors`` or shards ``model-0000k-of-0000n.safetensors``
listed by ``model.safetensors.index.json``. The index is checked against the shards before
anything is grown: a shard it names that is missing, a tensor it places in a file that does
not hold it, or a shard tensor it does not list is a :class:`~autogrow.CheckpointError`
naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..recipe import CheckpointError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one stored tensor lives and what it is, read from its file's header."""

    name: str
    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


class SourceCheckpoint:
    """The weights of a checkpoint directory, read lazily with ``safetensors.safe_open``.

    Only headers are read on construction; :meth:`tensor` reads one tensor. The files are
    never written to.

    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> d = Path(tempfile.mkdtemp())
    >>> save_file({"w": torch.ones(2, 3)}, str(d / "model.safetensors"))
    >>> src = SourceCheckpoint(d)
    >>> src.infos["w"].shape, src.tensor("w").sum().item()
    ((2, 3), 6.0)
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, Any] = {}
        index = self.root / INDEX
        if index.is_file():
            self._read_index(index)
        elif (self.root / WEIGHTS).is_file():
            self._read_file(WEIGHTS, None)
        else:
            raise CheckpointError(
                f"{self.root} holds neither {INDEX} nor {WEIGHTS}: not a safetensors "
                "checkpoint directory (pytorch_model.bin checkpoints are not read: they are "
                "pickles; convert them with save_pretrained(safe_serialization=True))"
            )

    @property
    def files(self) -> list[str]:
        """The weight files, in the order their tensors were first listed."""
        return list(dict.fromkeys(i.file for i in self.infos.values()))

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in all files."""
        return sum(i.nbytes for i in self.infos.values())

    def _read_index(self, index: Path) -> None:
        try:
            data = json.loads(index.read_text())
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{index} is not a safetensors index ({type(e).__name__}: {e}); the "
                "checkpoint is damaged"
            ) from None
        self.metadata = dict(data.get("metadata") or {})
        by_file: dict[str, set[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(str(file), set()).add(name)
        missing = [f for f in by_file if not (self.root / f).is_file()]
        if missing:
            raise CheckpointError(
                f"{index} lists shard(s) that do not exist in {self.root}: "
                f"{', '.join(sorted(missing)[:5])}; the checkpoint is incomplete (download "
                "or copy the missing files)"
            )
        for file, names in by_file.items():
            self._read_file(file, names)

    def _read_file(self, file: str, expected: set[str] | None) -> None:
        path = self.root / file
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                for name in keys:
                    part = f.get_slice(name)
                    dtype = _DTYPES.get(part.get_dtype())
                    if dtype is None:
                        raise CheckpointError(
                            f"{path}: tensor {name!r} has dtype {part.get_dtype()}, which "
                            "streamed growth does not handle"
                        )
                    self.infos[name] = TensorInfo(name, file, tuple(part.get_shape()), dtype)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from e
        if expected is not None:
            absent = sorted(expected - set(keys))
            extra = sorted(set(keys) - expected)
            if absent or extra:
                parts = []
                if absent:
                    parts.append(f"it lacks {', '.join(absent[:3])} that the index places there")
                if extra:
                    parts.append(f"it holds {', '.join(extra[:3])} that the index does not list")
                raise CheckpointError(
                    f"{path} disagrees with {INDEX}: {'; '.join(parts)}. The index belongs "
                    "to another version of the checkpoint; download it again"
                )

    def tensor(self, name: str) -> torch.Tensor:
        """One stored tensor (a CPU tensor of the stored dtype).

        ``safe_open`` maps the file and returns a view of its pages, which count as resident
        memory while the mapping lives; opening the file for each tensor keeps only this
        tensor's pages mapped, released when the tensor is freed (the header is read again,
        which costs microseconds).
        """
        info = self.infos[name]
        path = self.root / info.file
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read tensor {name!r} of {path}: {e}") from e

    def close(self) -> None:
        """Nothing to close: files are opened per tensor (kept for callers that close)."""
