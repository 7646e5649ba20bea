"""Trial checkpoints as Optuna artifacts: ``autogrow.save`` directories packed in a tar file.

An artifact store holds single files, so the checkpoint directory (``model.safetensors`` +
``recipe.json``) and ``probe.safetensors`` (a fixed input batch and the model's outputs on
it, so anyone can check that a loaded model reproduces the saved one) go into one
uncompressed tar. Nothing here pickles or unpickles: weights are safetensors, metadata JSON.

The study database and the artifact store may be shared by several machines, so a checkpoint
read back from them is loaded like any other: its seed factory is called only if
``autogrow.load`` allows it (:mod:`autogrow.checkpoint.trust`), or if it is the seed factory of
the search space this process loaded itself from a file the user named.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PROBE = "probe.safetensors"


def _io() -> Any:
    import autogrow

    return autogrow


def save_checkpoint(
    model: nn.Module, directory: Path, probe_inputs: torch.Tensor, extra: Mapping[str, Any]
) -> Path:
    """``autogrow.save(model, directory, extra=extra)`` plus the probe outputs; returns it.

    The outputs are computed on a fresh contiguous copy of ``probe_inputs``, which is what is
    stored and what :func:`load_probe` gives back (see there).
    """
    _io().save(model, directory, extra=dict(extra))
    inputs = probe_inputs.detach().clone(memory_format=torch.contiguous_format)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    model.train(was_training)
    save_file({"inputs": inputs, "outputs": outputs.contiguous()}, str(directory / PROBE))
    return directory


def upload(
    trial: Any,
    store: Any,
    model: nn.Module,
    probe_inputs: torch.Tensor,
    extra: Mapping[str, Any],
    name: str,
) -> str:
    """Save ``model``, pack it as ``<name>.tar`` and upload it to ``trial``; the artifact id."""
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(model, Path(tmp) / "checkpoint", probe_inputs, extra)
        archive = Path(tmp) / f"{name}.tar"
        with tarfile.open(archive, "w") as tar:
            for f in sorted(ckpt.iterdir()):
                tar.add(f, arcname=f.name)
        return upload_artifact(artifact_store=store, file_path=str(archive), study_or_trial=trial)


def download(store: Any, artifact_id: str, directory: Path) -> Path:
    """Fetch an artifact and unpack it into ``directory`` (created); returns ``directory``.

    Extraction uses tarfile's ``"data"`` filter: no absolute paths, links out or devices.
    """
    from optuna.artifacts import download_artifact

    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "checkpoint.tar"
    download_artifact(artifact_store=store, file_path=str(archive), artifact_id=artifact_id)
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    archive.unlink()
    return directory


def load_model(
    store: Any, artifact_id: str, *, trust: bool = False, seed_factory: str | None = None
) -> nn.Module:
    """The model stored as artifact ``artifact_id``, rebuilt by ``autogrow.load`` (no pickle).

    ``trust`` is ``autogrow.load``'s. ``seed_factory``: the seed factory of the search space
    this process loaded from its file (code the user chose to run); a checkpoint whose recipe
    names exactly that factory is loaded with ``trust=True``, any other factory must be
    allowed by ``autogrow.load``.
    """
    from ..checkpoint.io import read_info
    from ..checkpoint.recipe import factory_name

    with tempfile.TemporaryDirectory() as tmp:
        folder = download(store, artifact_id, Path(tmp))
        if not trust and seed_factory is not None:
            trust = read_info(folder).get("factory") == factory_name(seed_factory)
        return _io().load(folder, trust=trust)


def load_probe(directory: Path) -> dict[str, torch.Tensor]:
    """The probe batch and outputs saved next to a checkpoint (``inputs``, ``outputs``).

    The tensors are fresh copies, not views of the file's memory map: a view of the inputs
    starts at an address that is not 64-byte aligned, and some CPU kernels (matrix products
    on AVX-512 machines) then take another code path whose result can differ in the last bit.
    A model loaded from the checkpoint reproduces ``outputs`` bit for bit on these
    ``inputs``, on the machine and software that wrote them (``autogrow.load``'s promise:
    bit-identical outputs for the same input tensor).
    """
    return {k: v.clone() for k, v in load_file(str(Path(directory) / PROBE)).items()}
