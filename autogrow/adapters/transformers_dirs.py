"""Hugging Face checkpoint directories (``config.json`` beside safetensors weights), for
streamed growth: the model class comes from the config's ``architectures`` entry, is built
from the config with its parameters on the meta device, and the grown model's config is
written with ``save_pretrained``'s config writer. transformers is imported only here, and only
when such a directory is grown.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import ConstraintError
from .directories import DirectoryFormat, parameters_on_meta
from .transformers import _quiet

CONFIG = "config.json"


class TransformersDirectory(DirectoryFormat):
    """A directory written by ``save_pretrained``: ``config.json`` names the model class."""

    name = "transformers"

    def matches(self, path: Path) -> bool:
        return (path / CONFIG).is_file()

    def description_file(self, path: Path) -> Path:
        return path / CONFIG

    def build(self, path: Path, *, buffers_on_meta: bool) -> nn.Module:
        import transformers

        data = json.loads((path / CONFIG).read_text())
        names = data.get("architectures") or []
        if not names or not isinstance(getattr(transformers, str(names[0]), None), type):
            raise ConstraintError(
                f"config.json names no model class of transformers in 'architectures' "
                f"({names!r}); add the class name (e.g. LlamaForCausalLM) to it"
            )
        cls = getattr(transformers, names[0])
        with _quiet():
            config = transformers.AutoConfig.from_pretrained(str(path))
            with parameters_on_meta(buffers=buffers_on_meta):
                model = cls(config)
        return model.eval()

    def write_description(self, model: nn.Module, out: Path) -> None:
        model.config.save_pretrained(str(out))  # type: ignore[union-attr, operator]

    def weight_files(self, path: Path) -> set[str]:
        return {CONFIG}
