"""Checkpoint directories of model libraries, for growth that streams weights from disk
(:mod:`autogrow.checkpoint.stream`): how to build the model a directory describes without
allocating its weights, and how to write the grown model's description next to new weights.

Like :class:`~autogrow.adapters.ModelAdapter`, the core names no library: a
:class:`DirectoryFormat` speaks for the directories it recognises, and :func:`directory_format`
finds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


@contextmanager
def parameters_on_meta(*, buffers: bool) -> Iterator[None]:
    """Build modules with parameters on the meta device (no memory, no initialisation cost);
    buffers too when ``buffers``, else buffers stay on the CPU (non-persistent buffers such as
    rotary frequencies are computed in ``__init__`` and stored in no checkpoint).

    >>> with parameters_on_meta(buffers=False):
    ...     bn = torch.nn.BatchNorm1d(3)
    >>> bn.weight.device.type, bn.running_mean.device.type
    ('meta', 'cpu')
    """
    if buffers:
        with torch.device("meta"):
            yield
        return
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            # torch.empty pages were never touched: nothing became resident
            kwargs = {"requires_grad": param.requires_grad}
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


class DirectoryFormat:
    """A library's checkpoint directory: its description of the model beside the weights.

    Subclasses override every method.
    """

    name = "none"
    single_file = False  # True: the weights are one file whatever max_shard_size says
    rebuilds_grown = True  # False: verification runs the planned model, not one rebuilt

    def matches(self, path: Path) -> bool:
        """Whether this format speaks for the directory ``path``."""
        return False

    def description_file(self, path: Path) -> Path:
        """The file that describes the architecture (named in errors)."""
        raise NotImplementedError

    def build(self, path: Path, *, buffers_on_meta: bool) -> nn.Module:
        """The model the directory describes, in eval mode, parameters on the meta device
        (buffers too with ``buffers_on_meta``). Raises any exception the library raises."""
        raise NotImplementedError

    def write_description(self, model: nn.Module, out: Path) -> None:
        """Write the description of (grown) ``model`` into the directory ``out``."""
        raise NotImplementedError

    def weight_files(self, path: Path) -> set[str]:
        """File names in ``path`` that belong to the weights (not copied to the output)."""
        return set()


def directory_format(path: str | os.PathLike[str]) -> DirectoryFormat | None:
    """The format of the checkpoint directory ``path``, or None when no library's matches.

    >>> import tempfile
    >>> directory_format(tempfile.mkdtemp()) is None
    True
    """
    from .transformers_dirs import TransformersDirectory

    for fmt in (TransformersDirectory(),):
        if fmt.matches(Path(path)):
            return fmt
    return None
