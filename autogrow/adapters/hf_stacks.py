"""A transformers config's layer counts: which container of layers each count sizes, learnt
by probing on meta (no table per architecture), and keeping the counts in step after deepen
or stack.

A count is a layer-count field (``num_hidden_layers``, ``n_layer``, ...) or an int entry of a
per-stage list (ResNet's, ConvNeXt's and Swin's ``depths[i]``). Each candidate whose value is
the length of some container of identical layers is raised by one and the model built on the
meta device: the count sizes the container that then holds one more layer, with every other
tensor unchanged. A count that adds nothing (Swin's ``num_layers``, derived from ``depths``)
sizes no container, so the blocks inside a stage, not the stages, are the stack.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from torch import nn

from .hf_config import build_on_meta, configured, field_roots, get_field, set_field, shapes

LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers")


def _stack_containers(model: nn.Module) -> dict[str, int]:
    """Containers of one layer type, outermost first: name → length."""
    found: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m):
            if len({type(layer) for layer in m}) == 1:
                found[name] = len(m)
    return found


def _count_candidates(config: Any, lengths: set[int]) -> dict[str, int]:
    """Layer-count fields and int entries of list fields whose value is a container length."""
    out: dict[str, int] = {}
    for k, v in vars(config).items():
        if k.startswith("_"):
            continue
        if k in LAYER_COUNTS and type(v) is int and v in lengths:
            out[k] = v
        elif type(v) in (list, tuple) and 0 < len(v) <= 16:
            out.update({f"{k}[{i}]": x for i, x in enumerate(v) if type(x) is int and x in lengths})
    return out


def _one_more(config: Any, field: str, value: int) -> dict[str, Any]:
    """The changes that add one layer to the stack ``field`` counts: the count, and for a
    whole-model count the per-layer lists (``layer_types``) that repeat their last entry."""
    changes: dict[str, Any] = {field: value + 1}
    if "[" not in field:
        for attr, v in vars(config).items():
            if isinstance(v, list) and len(v) == value and v and not attr.startswith("_"):
                changes[attr] = [*v, v[-1]]
    return changes


_CONFIGS: dict[str, tuple[type, Any]] = {}


def layer_stacks(model: nn.Module) -> dict[str, str]:
    """The layer stacks of a transformers model: container name → the config field (or list
    entry ``field[i]``) that states its length; an empty dict for other models. Nested stacks
    inside a stack already found are left out (the layers are copied whole)."""
    from .transformers import is_hf_model

    if not is_hf_model(model):
        return {}
    key = f"{type(model).__module__}.{type(model).__qualname__}:" + json.dumps(
        model.config.to_dict(), sort_keys=True, default=str
    )
    _CONFIGS[key] = (type(model), model.config)
    try:
        probed = _probe_stacks(key)
    finally:
        _CONFIGS.pop(key, None)
    # the model itself must agree with what its config builds (a model changed by hand does not)
    modules = dict(model.named_modules())
    return {
        name: field
        for name, field in probed
        if isinstance(modules.get(name), (nn.ModuleList, nn.Sequential))
        and len(modules[name]) == get_field(model.config, field)
    }


@lru_cache(maxsize=8)
def _probe_stacks(key: str) -> tuple[tuple[str, str], ...]:
    model_type, config = _CONFIGS[key]
    base_model = build_on_meta(model_type, configured(config, {}))
    containers = _stack_containers(base_model)
    base = shapes(base_model)
    stacks: dict[str, str] = {}
    for field, value in _count_candidates(config, set(containers.values())).items():
        try:
            grown = build_on_meta(model_type, configured(config, _one_more(config, field, value)))
        except Exception:  # noqa: BLE001 - the config class rejects it: trust a count's name
            if "[" not in field:
                stacks.update({n: field for n, k in containers.items() if k == value})
            continue
        after = _stack_containers(grown)
        more = [n for n, k in containers.items() if k == value and after.get(n) == value + 1]
        have = shapes(grown)
        same = all(have.get(k) == s for k, s in base.items())
        under = tuple(f"{n}.{value}." for n in more)
        if more and same and all(k in base or k.startswith(under) for k in have):
            stacks.update({n: field for n in more})
    outermost = {n: f for n, f in stacks.items() if not any(n.startswith(f"{s}.") for s in stacks)}
    return tuple(sorted(outermost.items(), key=lambda nf: list(containers).index(nf[0])))


def sync_layer_count(
    model: nn.Module, stacks: dict[str, str], inserted: list[tuple[str, int | None, int]]
) -> Callable[[], None]:
    """After ``n`` layers were inserted at ``index`` of ``container`` (for each entry) of the
    ``stacks`` found before insertion (:func:`layer_stacks`): set the config's layer counts,
    the per-layer config lists (``layer_types``), each layer's ``layer_idx`` (caches and masks
    index by it) and the size attributes of the new layers (a Swin block's ``shift_size``) to
    what the new config builds. Returns an undo function."""
    config = getattr(model, "config", None)
    by_stack: dict[str, list[tuple[int, int]]] = {}
    for container, index, n in inserted:
        if index is not None:
            by_stack.setdefault(container, []).append((index, n))
    sources: dict[str, list[int]] = {}
    new_layers: list[str] = []
    for container, field in stacks.items():
        if container not in by_stack:
            continue
        sources[container] = list(range(int(get_field(config, field))))
        for index, n in sorted(by_stack[container], reverse=True):
            sources[container][index:index] = [index - 1] * n
        keys = list(model.get_submodule(container)._modules)
        shift = 0  # layers inserted at lower indices move the later insertions up
        for index, n in sorted(by_stack[container]):
            start = index + shift
            new_layers += [f"{container}.{keys[j]}" for j in range(start, start + n)]
            shift += n
    undo_counts = sync_layer_sources(model, stacks, sources)
    undo_attrs = attributes_as_built(model, new_layers)

    def restore() -> None:
        undo_attrs()
        undo_counts()

    return restore


def attributes_as_built(model: nn.Module, names: list[str]) -> Callable[[], None]:
    """Give the modules of the new layers ``names`` the size attributes that the model's
    config builds there (a copied layer may sit where the config alternates a setting)."""
    from .transformers import adopt_sizes

    undo: list[tuple[nn.Module, str, Any]] = []
    if names:
        undo = adopt_sizes(model, build_on_meta(type(model), model.config), names)

    def restore() -> None:
        for module, attr, value in reversed(undo):
            setattr(module, attr, value)

    return restore


def sync_layer_sources(
    model: nn.Module, stacks: dict[str, str], sources: dict[str, list[int]]
) -> Callable[[], None]:
    """After the layers of ``stacks`` (found before, :func:`layer_stacks`) were rebuilt so
    that layer ``i`` of ``container`` is a copy of old layer ``sources[container][i]``: set the
    config's layer count (or per-stage entry), the per-layer config lists (``layer_types``,
    taken from each layer's source) and each layer's ``layer_idx``. Returns an undo function."""
    config = getattr(model, "config", None)
    undo: list[tuple[Any, str, Any]] = []

    def put(obj: Any, attr: str, value: Any) -> None:
        undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    for container, field in stacks.items():
        if container not in sources:
            continue
        layers = model.get_submodule(container)
        old_count = get_field(config, field)
        for root in field_roots(field):
            undo.append((config, root, getattr(config, root)))
        set_field(config, field, len(layers))
        if "[" not in field:  # a whole-model count: lists with one entry per layer follow
            for attr, value in list(vars(config).items()):
                if isinstance(value, list) and len(value) == old_count and not attr.startswith("_"):
                    put(config, attr, [value[i] for i in sources[container]])
        for i, layer in enumerate(layers):
            for m in layer.modules():
                if type(getattr(m, "layer_idx", None)) is int and m.layer_idx != i:
                    put(m, "layer_idx", i)

    def restore() -> None:
        for obj, attr, value in reversed(undo):
            setattr(obj, attr, value)

    return restore
