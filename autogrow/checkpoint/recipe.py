"""The growth recipe a model carries: its seed's factory and the transforms applied since.

``widen`` and ``deepen`` call :func:`record_step` on the model they return, so every grown model
knows how to rebuild its architecture: import the factory, call it with its JSON keyword
arguments, and replay the steps. The recipe is a plain attribute (``model.autogrow_recipe``):
not in ``state_dict``, copied by ``copy.deepcopy``, and replaced (never mutated) on each step,
so a parent and its child never share one.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..errors import AutogrowError, InvalidArgumentError
from ..transforms.lineage import (  # noqa: F401 - the recipe data, re-exported here
    RECIPE_ATTR,
    Recipe,
    Step,
    _plain,
    input_spec,
    recipe_of,
    record_step,
    set_recipe,
)


class CheckpointError(AutogrowError):
    """A checkpoint cannot be written, read or rebuilt (missing factory, bad files, mismatch).

    >>> import tempfile, autogrow
    >>> try:
    ...     autogrow.save("not a model", tempfile.mkdtemp())
    ... except autogrow.CheckpointError as e:
    ...     print(e)
    save expects an nn.Module, got str
    """


def factory_name(factory: str | Callable[..., Any]) -> str:
    """``"package.module:qualname"`` for a factory given by name or as an importable callable.

    >>> import torch
    >>> factory_name(torch.nn.Linear), factory_name("torchvision.models:resnet18")
    ('torch.nn.modules.linear:Linear', 'torchvision.models:resnet18')
    """
    if isinstance(factory, str):
        module, sep, attr = factory.partition(":")
        if not sep or not module or not attr:
            raise InvalidArgumentError(
                f"factory {factory!r} is not of the form 'package.module:callable' "
                "(e.g. 'torchvision.models:resnet18')"
            )
        return factory
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    name = f"{module}:{qualname}"
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise InvalidArgumentError(
            f"factory {factory!r} cannot be imported by name ({name}); define it at the top level "
            "of an importable module, or pass its name as 'package.module:callable'"
        )
    return name


def resolve_factory(name: str) -> Callable[..., Any]:
    """Import the callable named ``"package.module:attr.path"``.

    >>> resolve_factory("torch.nn:Linear")
    <class 'torch.nn.modules.linear.Linear'>
    """
    module_name, _, attr = factory_name(name).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise InvalidArgumentError(
            f"cannot import factory {name!r}: {type(e).__name__}: {e}. Install the package that "
            "provides it, or check the name ('package.module:callable')"
        ) from None
    if not callable(obj) or inspect.isbuiltin(obj):
        # builtins (os.system, eval, ...) never build models; refusing them narrows what a
        # malicious recipe.json could run.
        raise InvalidArgumentError(f"factory {name!r} is not a Python callable that builds a model")
    return obj


def seed_model(factory: str | Callable[..., Any], /, **kwargs: Any) -> nn.Module:
    """Build a model with ``factory(**kwargs)`` and record the factory as its recipe's seed.

    Models built this way, and every model grown from them, can be saved with
    :func:`autogrow.save` without naming the factory again. ``kwargs`` must be JSON values;
    the factory receives them after a JSON round trip (tuples become lists), exactly as
    :func:`autogrow.load` will pass them. ``seed_model`` calls the factory you name, whatever it
    is; :func:`autogrow.load` calls a checkpoint's factory only if it is allow-listed or
    registered (:func:`autogrow.register_factory`), or if you pass ``trust=True``.

    >>> import autogrow
    >>> net = autogrow.seed_model("torch.nn:Linear", in_features=4, out_features=2)
    >>> net.autogrow_recipe.factory, dict(net.autogrow_recipe.factory_kwargs)
    ('torch.nn:Linear', {'in_features': 4, 'out_features': 2})
    """
    name = factory_name(factory)
    return build_seed(name, resolve_factory(name), kwargs)


def build_seed(name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> nn.Module:
    """``factory(**kwargs)`` (after a JSON round trip), carrying a recipe that names ``name``.

    >>> import torch
    >>> build_seed("torch.nn:Linear", torch.nn.Linear, {"in_features": 2, "out_features": 1})
    Linear(in_features=2, out_features=1, bias=True)
    """
    stored = _plain(kwargs)
    model = factory(**stored)
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"factory {name!r} returned {type(model).__name__}, not an nn.Module"
        )
    set_recipe(model, Recipe(name, stored))
    return model
