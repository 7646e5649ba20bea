"""``autogrow.save`` / ``autogrow.load``: a directory with safetensors weights and a JSON recipe.

Layout of a checkpoint directory::

    model.safetensors   parameters and persistent buffers (tied tensors stored once)
    recipe.json         format, autogrow version, seed factory, growth steps, train/eval
                        flag, frozen parameters, and the caller's ``extra`` metadata

Loading imports the factory, builds the seed, replays the steps with ``verify=False`` (only
the architecture matters: widen's width plan depends on the graph, deepen replays the places
it resolved, stack the layer stacks it copied) and loads the weights. Nothing is unpickled.
The factory that ``recipe.json`` names is imported and called only if :mod:`.trust` allows
it (model builders of torch.nn, torchvision, timm and transformers, and factories registered
with :func:`autogrow.register_factory`), or if the caller passes ``trust=True``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from .._version import __version__
from ..errors import AutogrowError, GrowthWarning
from ..transforms.deepen import InsertionPoint, deepen
from ..transforms.stack import stack
from ..transforms.widen import widen
from .recipe import (
    CheckpointError,
    Recipe,
    Step,
    _plain,
    build_seed,
    factory_name,
    recipe_of,
    set_recipe,
)
from .trust import allowed_factory

FORMAT = "autogrow-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
RECIPE = "recipe.json"


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    factory: str | Callable[..., Any] | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` to the directory ``path`` (created if needed); returns the path.

    Args:
        model: a model built by :func:`autogrow.seed_model`, grown from one by
            ``widen``/``deepen``, or loaded by :func:`load`; any other model needs ``factory``.
        path: the checkpoint directory; ``model.safetensors`` and ``recipe.json`` in it are
            replaced.
        factory: ``"package.module:callable"`` (or the callable) that builds the seed model,
            overriding the one the model records. The model's recorded growth steps are
            replayed on top of it.
        factory_kwargs: JSON keyword arguments for ``factory``.
        extra: JSON metadata stored in ``recipe.json`` under ``"extra"`` (see
            :func:`read_info`).
        check: rebuild the architecture from the recipe now and compare every tensor name
            and shape with ``model``, so that a checkpoint that cannot be loaded is never
            written (costs one seed build and the replay of the steps).

    Raises:
        CheckpointError: no factory is known, the recipe does not rebuild ``model``, or the
            weights cannot be stored.

    >>> import tempfile, torch, autogrow
    >>> net = autogrow.seed_model("torch.nn:Linear", in_features=4, out_features=3)
    >>> path = autogrow.save(net, tempfile.mkdtemp())
    >>> sorted(p.name for p in path.iterdir())
    ['model.safetensors', 'recipe.json']
    """
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"save expects an nn.Module, got {type(model).__name__}")
    recipe = recipe_of(model)
    if factory is not None:
        recipe = recipe.with_factory(factory_name(factory), factory_kwargs or {})
    elif factory_kwargs is not None:
        raise CheckpointError("factory_kwargs was given without factory; pass both")
    if recipe.factory is None:
        raise CheckpointError(
            f"{type(model).__name__} has no known factory, so a checkpoint could not rebuild "
            "it: build the seed with autogrow.seed_model('package.module:callable', **kwargs) "
            "before growing it, or pass save(model, path, factory='package.module:callable', "
            "factory_kwargs={...})"
        )
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "autogrow_version": _version(),
        **recipe.to_json(),
        "training": model.training,
        "frozen": [n for n, p in model.named_parameters() if not p.requires_grad],
        "extra": _plain(dict(extra or {})),
    }
    if check:
        _check_rebuilds(model, recipe)
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory; name a directory to save to")
    out.mkdir(parents=True, exist_ok=True)
    # Write to temporary names, then rename: a crash never leaves half a file under the
    # final names. The recipe goes last, so its presence marks a complete checkpoint.
    tmp = out / f".{WEIGHTS}.tmp"
    try:
        save_model(model, str(tmp), metadata={"format": "pt", "autogrow": _version()})
    except (RuntimeError, ValueError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot store the weights of {type(model).__name__}: {e}") from e
    os.replace(tmp, out / WEIGHTS)
    tmp = out / f".{RECIPE}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / RECIPE)
    return out


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of a checkpoint's ``recipe.json`` (factory, steps, ``extra``, ...).

    >>> import tempfile, autogrow
    >>> net = autogrow.seed_model("torch.nn:Linear", in_features=4, out_features=3)
    >>> info = read_info(autogrow.save(net, tempfile.mkdtemp(), extra={"accuracy": 0.5}))
    >>> info["factory"], info["extra"]
    ('torch.nn:Linear', {'accuracy': 0.5})
    """
    root = Path(path)
    file = root / RECIPE
    if not file.is_file():
        what = "does not exist" if not root.exists() else f"has no {RECIPE}"
        raise CheckpointError(
            f"{root} {what}: not an autogrow checkpoint (autogrow.save writes {RECIPE} and "
            f"{WEIGHTS} into a directory)"
        )
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); the checkpoint is damaged") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an autogrow recipe (no format: {FORMAT!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format version {info.get('format_version')!r}; this autogrow "
            f"({_version()}) reads version {FORMAT_VERSION}. Use the autogrow version that wrote "
            f"it ({info.get('autogrow_version')})"
        )
    return info


def load(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    trust: bool = False,
) -> nn.Module:
    """Rebuild the model saved in ``path`` by :func:`save`; no pickle is ever loaded.

    Imports the seed's factory, builds the seed, replays the growth steps (architecture
    only), moves the model to ``map_location`` and loads the weights strictly: every tensor
    name and shape must match. The train/eval flag and frozen parameters are restored, and
    the model carries its recipe, so it can be grown and saved again.

    What a checkpoint promises: the loaded model holds bit-identical tensors (names, shapes,
    dtypes, values), so on the same machine and software it returns bit-identical outputs
    for the same input tensor. An equal input elsewhere in memory (a tensor read from a file
    by memory mapping, at an address that is not 64-byte aligned) may give outputs that
    differ in the last bit, because CPU kernels such as matrix products pick another code
    path for it: compare outputs on one tensor, or on fresh copies (``x.clone()``).

    Args:
        path: the checkpoint directory.
        map_location: the device the model and its weights are put on.
        trust: call the factory ``recipe.json`` names whatever it is. By default only
            allow-listed factories are imported and called: model classes of ``torch.nn``,
            torchvision and timm model builders, transformers model classes,
            ``autogrow.search.models``, and factories registered with
            :func:`autogrow.register_factory` (see :mod:`autogrow.checkpoint.trust`). A
            checkpoint from elsewhere can run any code through its factory; pass ``trust=True``
            only for checkpoints you trust like code.

    Raises:
        CheckpointError: files missing or damaged, the factory is not allowed (naming it and
            ``trust=True``) or cannot be imported, a step cannot be replayed, or the weights
            do not match the rebuilt architecture.

    >>> import tempfile, torch, autogrow
    >>> net = autogrow.seed_model("torch.nn:Linear", in_features=4, out_features=3)
    >>> same = autogrow.load(autogrow.save(net, tempfile.mkdtemp()))
    >>> torch.equal(same.weight, net.weight)
    True
    """
    root = Path(path)
    info = read_info(root)
    weights = root / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{root} has {RECIPE} but no {WEIGHTS}; the checkpoint is incomplete")
    try:
        recipe = Recipe.from_json(info)
    except (KeyError, TypeError, ValueError, AutogrowError) as e:
        raise CheckpointError(f"{root / RECIPE} holds a malformed recipe: {e}") from e
    model = build(recipe, where=str(root), trust=trust)
    model.to(map_location)
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {weights}: {e}") from e
    _load_state(model, state, str(weights))
    model.train(bool(info.get("training", False)))
    params = dict(model.named_parameters())
    for name in info.get("frozen") or ():
        if name in params:
            params[name].requires_grad_(False)
    set_recipe(model, recipe)
    return model


def build(recipe: Recipe, *, where: str = "the recipe", trust: bool = False) -> nn.Module:
    """The architecture ``recipe`` describes: the seed, grown by its steps (weights are not
    meaningful; :func:`load` overwrites them). ``trust`` is :func:`load`'s.

    >>> from autogrow.checkpoint.recipe import Recipe, Step
    >>> r = Recipe("torch.nn:Linear", {"in_features": 4, "out_features": 3})
    >>> build(r).weight.shape
    torch.Size([3, 4])
    """
    if recipe.factory is None:
        raise CheckpointError(f"{where} names no seed factory, so the model cannot be rebuilt")
    try:
        factory = allowed_factory(recipe.factory, recipe.factory_kwargs, trust=trust, where=where)
    except CheckpointError:
        raise
    except AutogrowError as e:
        raise CheckpointError(f"{where}: cannot build the seed model: {e}") from e
    try:
        model = build_seed(recipe.factory, factory, recipe.factory_kwargs)
    except AutogrowError as e:
        raise CheckpointError(f"{where}: cannot build the seed model: {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported the same way
        raise CheckpointError(
            f"{where}: the seed factory {recipe.factory}(**{dict(recipe.factory_kwargs)}) "
            f"raised {type(e).__name__}: {e}"
        ) from e
    for i, step in enumerate(recipe.steps):
        try:
            model = _replay(model, step)
        except AutogrowError as e:
            raise CheckpointError(
                f"{where}: replaying step {i + 1} of {len(recipe.steps)} ({step.op} "
                f"{json.dumps(dict(step.args))}) failed: {e}"
            ) from e
    return model


def _replay(model: nn.Module, step: Step) -> nn.Module:
    # Not inplace: widen(inplace=True) re-assigns one name of a tied parameter only
    # (transformers' lm_head/wte), while the copy path keeps ties through deepcopy.
    inputs = _example_inputs(model, step.inputs)
    args = step.args
    if step.op == "widen":
        if args.get("custom_registry"):
            raise CheckpointError(
                "this widen step used a custom rule registry, which a checkpoint cannot "
                "record; register the rules in autogrow.default_registry before loading"
            )
        factor = args["factor"]
        with warnings.catch_warnings():  # reported when the model was grown, not on each load
            warnings.simplefilter("ignore", GrowthWarning)
            return widen(
                model,
                dict(factor) if isinstance(factor, Mapping) else factor,
                example_inputs=inputs,
                seed=args["seed"],
                symmetry=args["symmetry"],
                verify=False,
            )
    elif step.op == "deepen":
        after = [InsertionPoint(where, kind, "", True) for where, kind in args["after"]]
        return deepen(model, after=after, n=args["n"], example_inputs=inputs, verify=False)
    elif step.op == "stack":
        return stack(
            model,
            args["factor"],
            order=args["order"],
            stacks=list(args["stacks"]),
            example_inputs=inputs,
            verify=False,
        )
    raise CheckpointError(f"unknown step {step.op!r}; a newer autogrow wrote this checkpoint?")


def _example_inputs(model: nn.Module, spec: Any) -> tuple[torch.Tensor, ...] | None:
    """Inputs of the recorded shapes: floats in the model's own float dtype, integers zero."""
    if spec is None:
        return None
    float_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    gen = torch.Generator().manual_seed(0)
    out = []
    for item in spec:
        dtype = getattr(torch, item["dtype"])
        shape = tuple(item["shape"])
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(float_dtype or dtype))
        else:
            out.append(torch.zeros(shape, dtype=dtype))
    return tuple(out)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load; tied tensors (stored once) fill all their names; dtypes follow the file."""
    own = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in own.items():
        groups.setdefault(id(t), []).append(name)
    full = dict(state)
    for names in groups.values():
        present = [n for n in names if n in state]
        if present:
            for n in names:
                full.setdefault(n, state[present[0]])
            target = own[names[0]]
            source = state[present[0]]
            if target.dtype != source.dtype and target.shape == source.shape:
                target.data = target.data.to(source.dtype)  # e.g. a model saved after .double()
    missing = sorted(set(own) - set(full))
    unexpected = sorted(set(full) - set(own))
    wrong = sorted(
        f"{n}: file {tuple(full[n].shape)}, rebuilt model {tuple(own[n].shape)}"
        for n in set(own) & set(full)
        if full[n].shape != own[n].shape
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                parts.append(f"{label}: {_shown(items)}")
        raise CheckpointError(
            f"the weights in {where} do not fit the model its recipe rebuilds ({'; '.join(parts)})."
            " The model was probably changed after growth by something other than "
            "autogrow.widen/deepen/stack, or the seed factory now builds a different model"
        )
    model.load_state_dict(full, strict=True)


def _check_rebuilds(model: nn.Module, recipe: Recipe) -> None:
    # the caller holds the model: its factory was called here already, or named by the caller
    rebuilt = build(recipe, where="the model's recipe", trust=True)
    mine = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    theirs = {n: tuple(t.shape) for n, t in rebuilt.state_dict().items()}
    if mine == theirs:
        return
    diff = sorted(set(mine) ^ set(theirs))
    diff += sorted(
        f"{n} {mine[n]} vs {theirs[n]}" for n in set(mine) & set(theirs) if mine[n] != theirs[n]
    )
    shown = _shown(diff)
    raise CheckpointError(
        f"{type(model).__name__} is not what its recipe rebuilds ({recipe.factory} plus "
        f"{len(recipe.steps)} growth step(s)); differing tensors: {shown}. Only changes made by "
        "autogrow.widen/deepen/stack are recorded. If a factory builds the current architecture, "
        "drop the recorded steps (del model.autogrow_recipe) and pass save(..., factory=..., "
        "factory_kwargs=...)"
    )


def _shown(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _version() -> str:
    return __version__
