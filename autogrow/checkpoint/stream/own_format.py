"""autogrow's own checkpoint directories (``model.safetensors`` + ``recipe.json``, written by
:func:`autogrow.save`) as a source and output of streamed growth.

The architecture is the recipe's: the seed factory is called with its parameters and buffers
on the meta device (only if :mod:`autogrow.checkpoint.trust` allows the factory, or with
``trust=True``), and the recorded widen steps are replayed there. Deepen steps cannot be
replayed on the meta device (finding a block's branch ends runs it on values), so a recipe
with one is refused with advice (deepening such a checkpoint works; its output can be loaded
with :func:`autogrow.load` but not streamed again). The output is again an autogrow checkpoint: one
``model.safetensors`` written as a stream, and ``recipe.json`` with the new step appended.
Buffers that no checkpoint stores (non-persistent ones) stay on meta, so a model that needs
them in ``forward`` cannot be verified (``verify=False``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ...adapters.directories import DirectoryFormat, parameters_on_meta
from ...errors import AutogrowError, GrowthWarning
from ...transforms.widen import widen
from ..io import FORMAT, FORMAT_VERSION, RECIPE, WEIGHTS, _example_inputs, _version, read_info
from ..recipe import CheckpointError, Recipe, build_seed, recipe_of
from ..trust import allowed_factory


class AutogrowDirectory(DirectoryFormat):
    """A directory written by :func:`autogrow.save`; ``trust`` as for :func:`autogrow.load`."""

    name = "autogrow"
    single_file = True  # autogrow.load reads one model.safetensors
    rebuilds_grown = False  # a deepen step cannot be replayed on meta (see the module doc)

    def __init__(self, *, trust: bool = False) -> None:
        self.trust = trust

    def matches(self, path: Path) -> bool:
        return (path / RECIPE).is_file()

    def description_file(self, path: Path) -> Path:
        return path / RECIPE

    def build(self, path: Path, *, buffers_on_meta: bool) -> nn.Module:
        info = read_info(path)
        try:
            recipe = Recipe.from_json(info)
        except (KeyError, TypeError, ValueError, AutogrowError) as e:
            raise CheckpointError(f"{path / RECIPE} holds a malformed recipe: {e}") from e
        if recipe.factory is None:
            raise CheckpointError(f"{path / RECIPE} names no seed factory")
        where = str(path)
        factory = allowed_factory(
            recipe.factory, recipe.factory_kwargs, trust=self.trust, where=where
        )
        with parameters_on_meta(buffers=True):
            model = build_seed(recipe.factory, factory, recipe.factory_kwargs)
        for i, step in enumerate(recipe.steps):
            if step.op != "widen":
                raise CheckpointError(
                    f"{path / RECIPE}: step {i + 1} is a {step.op}, which streamed growth cannot "
                    "replay on the meta device; load the checkpoint with autogrow.load and grow "
                    "it in memory"
                )
            args = step.args
            factor = args["factor"]
            inputs = _example_inputs(model, step.inputs)
            meta = None if inputs is None else tuple(x.to("meta") for x in inputs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GrowthWarning)
                model = widen(
                    model,
                    dict(factor) if isinstance(factor, Mapping) else factor,
                    example_inputs=meta,
                    seed=args["seed"],
                    symmetry=args["symmetry"],
                    verify=False,
                )
        self.info = info
        return model.train(bool(info.get("training", False))).eval()

    def write_description(self, model: nn.Module, out: Path) -> None:
        recipe = recipe_of(model)
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "autogrow_version": _version(),
            **recipe.to_json(),
            "training": bool(getattr(self, "info", {}).get("training", False)),
            "frozen": list(getattr(self, "info", {}).get("frozen") or []),
            "extra": dict(getattr(self, "info", {}).get("extra") or {}),
        }
        (out / RECIPE).write_text(json.dumps(info, indent=2) + "\n")

    def weight_files(self, path: Path) -> set[str]:
        return {RECIPE, WEIGHTS}
