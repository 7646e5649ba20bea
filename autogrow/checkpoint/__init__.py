"""Checkpoints of grown models: safetensors weights plus a JSON growth recipe.

:mod:`.recipe` owns the recipe a grown model carries (its seed factory and the transforms
applied since); :mod:`.io` writes and reads checkpoint directories (``autogrow.save`` /
``autogrow.load``); :mod:`.trust` decides which seed factories a checkpoint may have called.
This package does not import :mod:`.io` itself, because the transforms import :mod:`.recipe`
and :mod:`.io` imports the transforms.
"""

from .recipe import RECIPE_ATTR, CheckpointError, Recipe, Step, recipe_of, seed_model
from .trust import register_factory, registered_factories, unregister_factory

__all__ = [
    "RECIPE_ATTR",
    "CheckpointError",
    "Recipe",
    "Step",
    "recipe_of",
    "register_factory",
    "registered_factories",
    "seed_model",
    "unregister_factory",
]
