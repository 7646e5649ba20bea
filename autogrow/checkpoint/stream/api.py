"""``autogrow.widen_checkpoint`` / ``autogrow.deepen_checkpoint``: grow a checkpoint directory
on disk into a new one, without loading either model (docs/checkpoints-streaming.md)."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ...adapters.directories import DirectoryFormat, directory_format
from ...errors import AutogrowError, InvalidArgumentError
from ..recipe import CheckpointError
from .check import check_streamed, sample_inputs, stored_float_dtype
from .own_format import AutogrowDirectory
from .partial import files_identity, fingerprint
from .plan import check_matches, plan_deepen, plan_widen
from .source import SourceCheckpoint
from .writer import (
    OutputTensor,
    PartialOutput,
    copy_files,
    parse_size,
    write_index,
    write_shards,
)


@dataclass(frozen=True)
class StreamResult:
    """What a streamed growth wrote.

    Attributes:
        path: the output directory.
        changes: the description's fields that changed (e.g. ``{"hidden_size": 4096}``).
        parameters: elements stored (tied tensors once) before and after.
        bytes_written: bytes of tensor data written.
        shards: number of weight files written.
        max_error: the verification's max relative error (None with ``verify=False``).
        seed: the seed of widen's unit maps (None for deepen).
        seconds: wall time of each phase: ``plan`` (reading headers, building on meta,
            planning), ``write`` (reading, growing and writing the tensors), ``verify``.
        resumed_shards: shards an interrupted run with the same arguments had completed,
            kept rather than written again.

    >>> r = StreamResult(Path("wide"), {"hidden_size": 4096}, (1_100, 4_200), 8_400, 2, 0.0, 7)
    >>> r.parameters[1] / r.parameters[0] > 3, r.changes["hidden_size"]
    (True, 4096)
    """

    path: Path
    changes: dict[str, Any] = field(default_factory=dict)
    parameters: tuple[int, int] = (0, 0)
    bytes_written: int = 0
    shards: int = 0
    max_error: float | None = None
    seed: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_shards: int = 0


def widen_checkpoint(
    src: str | os.PathLike[str],
    factor: Any,
    out: str | os.PathLike[str],
    *,
    max_shard_size: int | str = "2GB",
    seed: int | None = None,
    symmetry: str = "split",
    verify: bool = True,
    tolerance: float | None = None,
    overwrite: bool = False,
    trust: bool = False,
) -> StreamResult:
    """Widen the checkpoint directory ``src`` into ``out`` without loading the model.

    The model is built from ``src``'s description (a Hugging Face ``config.json``) on the
    meta device, widened there to plan the widths and unit maps, and each stored tensor is
    then read, grown and written shard by shard; peak memory is about one output shard plus
    the tensor being grown. The output is a checkpoint of the same kind (the description
    updated, sharded safetensors with an index, dtypes kept, tied tensors stored once, the
    other files copied), which its library loads without autogrow. Same seed, same result as
    :func:`autogrow.widen` on the loaded model.

    Args:
        src: the checkpoint directory (``config.json`` plus ``model.safetensors`` or shards
            with ``model.safetensors.index.json``); never written to.
        factor: as for :func:`autogrow.widen` (a float > 1, or a dict of widths).
        out: the output directory; written as ``.<name>.partial`` beside it and renamed when
            complete. A partial directory left by an interrupted run with the same source
            and arguments (and seed) is resumed: its completed shards are kept; any other
            is removed.
        max_shard_size: bytes per output shard (an int, or ``"2GB"``, ``"500MB"``, ``"1GiB"``).
        seed: seeds the unit maps (None: drawn; :attr:`StreamResult.seed` tells it).
        symmetry: ``"split"`` or ``"none"``, as for :func:`autogrow.widen` (``"paired"`` is
            not offered streamed).
        verify: run both checkpoints on sample inputs, module by module, and compare (see
            :mod:`autogrow.checkpoint.stream.check`); False skips it.
        tolerance: the max relative error ``verify`` accepts (None: by the stored dtype).
        overwrite: replace ``out`` when it exists and is not empty.
        trust: for an autogrow checkpoint (``recipe.json``): call its seed factory whatever it
            is, as :func:`autogrow.load` does with ``trust=True`` (by default only allow-listed
            factories are called).

    Returns:
        A :class:`StreamResult`.

    Raises:
        CheckpointError: missing shards, an index that disagrees with the shards, a config the
            model class cannot build, weights that do not fit it, a write that fails (a full
            disk), each naming the file; nothing is left at ``out``.
        VerificationError: the written checkpoint differs from the source (nothing is left).
        ConstraintError, InvalidArgumentError: as for :func:`autogrow.widen`.

    ```python
    import autogrow
    r = autogrow.widen_checkpoint("llama-dir", 2.0, "llama-wide", max_shard_size="2GB", seed=0)
    print(r.changes, r.max_error)   # {'hidden_size': 4096, ...} 3e-3
    # transformers.AutoModelForCausalLM.from_pretrained("llama-wide") loads it
    ```
    """
    if symmetry == "paired":  # its noise is drawn over the whole model in memory
        raise InvalidArgumentError(
            "streamed growth does not offer symmetry='paired' (its zero-sum noise is drawn "
            "for the model as a whole); use 'split' (default) or 'none', or grow in memory"
        )
    start = time.perf_counter()
    root, fmt, source, model, names = _open(src, trust)
    result, plan, outputs = plan_widen(model, source, names, factor, seed=seed, symmetry=symmetry)
    changes = _changes(model, result)
    return _write(
        root, fmt, source, result, outputs, Path(out), changes, plan.seed, start,
        max_shard_size=max_shard_size, verify=verify, tolerance=tolerance, overwrite=overwrite,
        what="widened", args=("widen", repr(factor), plan.seed, symmetry),
    )  # fmt: skip


def deepen_checkpoint(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    after: Any = None,
    n: int = 1,
    max_shard_size: int | str = "2GB",
    verify: bool = True,
    tolerance: float | None = None,
    overwrite: bool = False,
    trust: bool = False,
) -> StreamResult:
    """Deepen the checkpoint directory ``src`` into ``out`` without loading the model.

    As :func:`autogrow.deepen`: ``n`` copies of a residual block with its branch ends zeroed
    are inserted (by default at the end of every run of blocks: for a transformers model, after
    its last layer, with ``num_hidden_layers`` updated). The model is built on the meta
    device; the blocks that may be copied (one per run of blocks) are read into memory, every
    other module's weights only while the recording forward (on sample inputs) runs it. The
    kept tensors are then copied file by file under their new names and the new blocks written
    from memory. Output, atomicity and errors as for :func:`widen_checkpoint`.

    Args:
        src: the checkpoint directory; never written to.
        out: the output directory.
        after: as for :func:`autogrow.deepen` (None: the default placement).
        n: blocks to insert at each place.
        max_shard_size: bytes per output shard (an int, or ``"2GB"``, ``"500MB"``).
        verify: compare both checkpoints on sample inputs, module by module.
        tolerance: the max relative error ``verify`` accepts (None: by the stored dtype).
        overwrite: replace ``out`` when it exists and is not empty.
        trust: as for :func:`widen_checkpoint`.

    Returns:
        A :class:`StreamResult`.

    Raises:
        CheckpointError, VerificationError: as for :func:`widen_checkpoint`.
        InvalidArgumentError: as for :func:`autogrow.deepen`.

    ```python
    import autogrow
    r = autogrow.deepen_checkpoint("llama-dir", "llama-deep", n=2)
    print(r.changes)   # {'num_hidden_layers': 24}
    ```
    """
    start = time.perf_counter()
    root, fmt, source, _, names = _open(src, trust)
    model = _build(fmt, root, buffers_on_meta=False)
    inputs = sample_inputs(model, stored_float_dtype(source))
    result, _, outputs = plan_deepen(model, source, names, after=after, n=n, inputs=inputs)
    changes = _changes(model, result)
    return _write(
        root, fmt, source, result, outputs, Path(out), changes, None, start,
        max_shard_size=max_shard_size, verify=verify, tolerance=tolerance, overwrite=overwrite,
        what="deepened", args=("deepen", repr(after), n),
    )  # fmt: skip


def _open(
    src: str | os.PathLike[str], trust: bool
) -> tuple[Path, DirectoryFormat, SourceCheckpoint, nn.Module, dict[str, str]]:
    root = Path(src)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory; name a checkpoint directory")
    fmt: DirectoryFormat | None = AutogrowDirectory(trust=trust)
    if not fmt.matches(root):
        fmt = directory_format(root)
    if fmt is None:
        raise CheckpointError(
            f"{root} is not a checkpoint directory streamed growth reads (a Hugging Face "
            "directory with config.json beside safetensors weights, or one autogrow.save wrote)"
        )
    source = SourceCheckpoint(root)
    model = _build(fmt, root, buffers_on_meta=True)
    names = check_matches(model, source, str(fmt.description_file(root)))
    return root, fmt, source, model, names


def _build(fmt: DirectoryFormat, root: Path, *, buffers_on_meta: bool) -> nn.Module:
    try:
        return fmt.build(root, buffers_on_meta=buffers_on_meta)
    except CheckpointError:
        raise
    except AutogrowError as e:
        raise CheckpointError(f"{fmt.description_file(root)}: {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure of the library's builder
        raise CheckpointError(
            f"{fmt.description_file(root)} does not describe a model its class can build "
            f"({type(e).__name__}: {e}); fix the file or use the library version that wrote it"
        ) from e


def _changes(old: nn.Module, new: nn.Module) -> dict[str, Any]:
    """Top-level description fields that differ (a config's ``to_dict``), if there is one."""
    a, b = (getattr(getattr(m, "config", None), "to_dict", None) for m in (old, new))
    if a is None or b is None:
        return {}
    before, after = a(), b()
    return {k: v for k, v in after.items() if before.get(k) != v}


def _write(
    root: Path,
    fmt: DirectoryFormat,
    source: SourceCheckpoint,
    result: nn.Module,
    outputs: list[OutputTensor],
    out: Path,
    changes: dict[str, Any],
    seed: int | None,
    start: float,
    *,
    max_shard_size: int | str,
    verify: bool,
    tolerance: float | None,
    overwrite: bool,
    what: str,
    args: tuple[Any, ...],
) -> StreamResult:
    max_bytes = parse_size(max_shard_size)
    if fmt.single_file:
        max_bytes = sum(t.nbytes for t in outputs) + 1
    if out.resolve() == root.resolve():
        raise CheckpointError(f"the output {out} is the source; name another directory")
    description = fmt.description_file(root)
    run = fingerprint(
        list(args),
        description.read_bytes() if description.is_file() else b"",
        files_identity(root, source.files),
        max_bytes,
        [(t.name, list(t.shape), str(t.dtype), t.key) for t in outputs],
    )
    partial = PartialOutput(out, overwrite=overwrite, run_fingerprint=run)
    seconds = {"plan": time.perf_counter() - start}
    try:
        weight_map, resumed = write_shards(partial, outputs, max_bytes)
        source.close()
        partial.write_file(
            fmt.description_file(out).name, lambda p: fmt.write_description(result, p.parent)
        )
        copy_files(root, partial, fmt.weight_files(root))
        total = sum(t.nbytes for t in outputs)
        write_index(partial, weight_map, total)
        seconds["write"] = time.perf_counter() - start - seconds["plan"]
        error = None
        if verify:
            written = SourceCheckpoint(partial.tmp)

            def build_new() -> nn.Module:
                if fmt.rebuilds_grown:  # the written description itself is checked
                    return _build(fmt, partial.tmp, buffers_on_meta=False)
                return copy.deepcopy(result).to("meta")  # the planned architecture

            error = check_streamed(
                lambda: _build(fmt, root, buffers_on_meta=False),
                source,
                build_new,
                written,
                what=what,
                tolerance=tolerance,
                where=out,
            )
            seconds["verify"] = time.perf_counter() - start - seconds["plan"] - seconds["write"]
    except (KeyboardInterrupt, SystemExit):
        raise  # the partial directory stays: a rerun with the same arguments resumes it
    except BaseException:
        partial.discard()
        raise
    path = partial.commit()
    before = sum(i.nbytes // i.dtype.itemsize for i in source.infos.values())
    after = sum(t.nbytes // t.dtype.itemsize for t in outputs)
    shards = len(set(weight_map.values()))
    return StreamResult(
        path, changes, (before, after), total, shards, error, seed, seconds, resumed
    )
