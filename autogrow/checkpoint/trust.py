"""Which seed factories :func:`autogrow.load` calls for a checkpoint it is not told to trust.

A checkpoint's ``recipe.json`` names the factory that builds its seed, ``"package.module:
callable"``, with JSON keyword arguments, and loading calls it. The file is data that anyone
may have written (a download, a study database shared by several machines), so by default
:func:`autogrow.load` calls a factory only if it is

- a model class of ``torch.nn`` (a subclass of ``nn.Module`` defined in ``torch.nn``);
- a torchvision model builder (a function in ``torchvision.models``' model registry, or
  ``torchvision.models.get_model``) or a model class of ``torchvision.models``;
- ``timm.create_model``, a model registered in timm, or a model class of timm, without the
  keyword arguments that read other files or hubs (``checkpoint_path``, ``pretrained_cfg``,
  ``pretrained_cfg_overlay``, ``cache_dir``; ``hf-hub:``/``local-dir:`` model names);
- a model class of transformers (``nn.Module`` subclasses such as ``GPT2LMHeadModel``);
- a function of :mod:`autogrow.search.models` (the seeds of the shipped search spaces);
- or a factory registered in this process with :func:`register_factory`.

The name decides first: a module outside these packages is never imported (importing a
module runs its code), and an attribute path may not leave the package it starts in; then the
object the name resolves to must be one of the above. Anything else raises
:class:`~autogrow.CheckpointError` naming the factory, :func:`register_factory` and
``trust=True`` (``--trust`` on the command line), which calls whatever the recipe names, as
before: only for checkpoints you trust like code.

The registry is one set per process (``register_factory`` adds to it, ``unregister_factory``
removes from it); worker processes of a search start without the parent's registrations.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from torch import nn

from .recipe import CheckpointError, factory_name, resolve_factory

F = TypeVar("F", bound=Callable[..., Any] | str)

ALLOWED = (
    "torch.nn model classes, torchvision and timm model builders, transformers model classes, "
    "autogrow.search.models"
)

# a factory's module must be one of these packages or inside one (decided before importing)
_ROOTS = ("torch.nn", "torchvision.models", "timm", "transformers", "autogrow.search.models")

# timm arguments that make create_model read a file or fetch a model from elsewhere
_TIMM_SOURCES = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")

_registered: set[str] = set()


def register_factory(factory: F) -> F:
    """Let :func:`autogrow.load` call ``factory`` without ``trust=True``; returns ``factory``.

    ``factory`` is a callable or its name ``"package.module:callable"``. Register the
    factories your own checkpoints name (those you pass to :func:`autogrow.seed_model`) before
    loading them: a checkpoint may then call them with whatever JSON keyword arguments it
    lists. Works as a decorator. The registry holds names, one set per process; see
    :func:`unregister_factory`.

    >>> import autogrow, tempfile
    >>> net = autogrow.seed_model("models:MLP", d_in=6)      # tests/models.py
    >>> path = autogrow.save(net, tempfile.mkdtemp())
    >>> try:
    ...     autogrow.load(path)
    ... except autogrow.CheckpointError as e:
    ...     print("'models:MLP' is not on autogrow's allow-list" in str(e), "trust=True" in str(e))
    True True
    >>> autogrow.register_factory("models:MLP")
    'models:MLP'
    >>> autogrow.load(path).fc1.in_features
    6
    >>> autogrow.unregister_factory("models:MLP")
    """
    _registered.add(factory_name(factory))
    return factory


def unregister_factory(factory: Callable[..., Any] | str) -> None:
    """Undo :func:`register_factory` (nothing happens if ``factory`` is not registered).

    >>> import autogrow
    >>> autogrow.register_factory("models:MLP")
    'models:MLP'
    >>> autogrow.unregister_factory("models:MLP")
    >>> "models:MLP" in registered_factories()
    False
    """
    _registered.discard(factory_name(factory))


def registered_factories() -> frozenset[str]:
    """The names registered with :func:`register_factory` in this process.

    >>> registered_factories() >= frozenset()
    True
    """
    return frozenset(_registered)


def allowed_factory(
    name: str, kwargs: Mapping[str, Any], *, trust: bool = False, where: str = "the recipe"
) -> Callable[..., Any]:
    """The callable ``name`` names, if a checkpoint may call it with ``kwargs``.

    With ``trust=True`` (or for a registered name) this is :func:`resolve_factory`; otherwise
    see the module docstring. Raises :class:`~autogrow.CheckpointError` for a factory that is
    not allowed, before importing anything outside the allowed packages.

    >>> allowed_factory("torch.nn:Linear", {"in_features": 2, "out_features": 2})
    <class 'torch.nn.modules.linear.Linear'>
    >>> try:
    ...     allowed_factory("subprocess:run", {"args": ["touch", "owned"]})
    ... except CheckpointError as e:
    ...     print(str(e)[:58])
    the recipe: the seed factory 'subprocess:run' is not on au
    """
    name = factory_name(name)
    if trust or name in _registered:
        return resolve_factory(name)
    module_name, _, attr = name.partition(":")
    root = next((r for r in _ROOTS if _inside(module_name, r)), None)
    if root is None:
        raise _refused(name, where, f"module {module_name} is outside the allowed packages")
    obj = _walk(name, module_name, attr, root, where)
    if not _allowed_object(obj, root):
        raise _refused(
            name, where, f"{_describe(obj)} is not a model class or model builder of {root}"
        )
    if root == "timm":
        _check_timm_kwargs(name, kwargs, where)
    return obj


def _inside(module: str, root: str) -> bool:
    return module == root or module.startswith(root + ".")


def _walk(name: str, module_name: str, attr: str, root: str, where: str) -> Any:
    """Import ``module_name`` and follow ``attr``; no step may reach a module outside ``root``."""
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
            if isinstance(obj, ModuleType) and not _inside(obj.__name__, root):
                raise _refused(name, where, f"{part!r} leads out of {root} to {obj.__name__}")
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f"{where}: cannot import factory {name!r}: {type(e).__name__}: {e}. Install the "
            "package that provides it, or check the name ('package.module:callable')"
        ) from None
    return obj


def _allowed_object(obj: Any, root: str) -> bool:
    module = getattr(obj, "__module__", None) or ""
    family = "torchvision" if root == "torchvision.models" else root
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module) and _inside(module, family)
    if not inspect.isfunction(obj):
        return False
    if root == "autogrow.search.models":
        return module == root
    if root == "torchvision.models":
        import torchvision.models as tvm

        return obj is tvm.get_model or any(
            obj is tvm.get_model_builder(n) for n in tvm.list_models()
        )
    if root == "timm":
        import timm

        fn_name = getattr(obj, "__name__", "")
        return obj is timm.create_model or (
            timm.models.is_model(fn_name) and timm.models.model_entrypoint(fn_name) is obj
        )
    return False


def _check_timm_kwargs(name: str, kwargs: Mapping[str, Any], where: str) -> None:
    sources = [k for k in _TIMM_SOURCES if kwargs.get(k) is not None]
    model_name = kwargs.get("model_name")
    if isinstance(model_name, str) and (":" in model_name or "/" in model_name):
        sources.append(f"model_name={model_name!r}")
    if sources:
        raise _refused(
            name,
            where,
            f"it is given {', '.join(sources)}, which make timm read a file or fetch a model "
            "from a hub",
        )


def _describe(obj: Any) -> str:
    kind = "class" if inspect.isclass(obj) else type(obj).__name__
    return f"{kind} {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!s}"


def _refused(name: str, where: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: the seed factory {name!r} is not on autogrow's allow-list ({ALLOWED}), "
        f"so it was not called: {reason}. Loading a checkpoint calls its factory, so a "
        "checkpoint from elsewhere could run any code through it. If you trust this "
        f"checkpoint like code, register the factory (autogrow.register_factory({name!r})) "
        "or pass trust=True (autogrow.load(path, trust=True); on the command line: --trust)"
    )


__all__ = [
    "ALLOWED",
    "allowed_factory",
    "register_factory",
    "registered_factories",
    "unregister_factory",
]
