"""Planning streamed growth on the meta device: the model is built from its description with
no weights, widened or deepened there (the plan depends on shapes, not values), and each
output tensor is described by its name, shape, dtype and how to compute it from one source
tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...adapters import adapter_for
from ...errors import GrowthWarning
from ...tracing.inputs import infer_example_inputs
from ...transforms.axis_maps import AxisMap
from ...transforms.depth import DeepenPlan, DeepenTransform
from ...transforms.lineage import record_step
from ...transforms.widen import WidenPlan, WidenTransform
from ..recipe import CheckpointError
from .grow import Grown, grow_into, scratch_bytes
from .lazy import LazyWeights, stored_names
from .partial import fingerprint
from .source import SourceCheckpoint
from .writer import OutputTensor


def check_matches(model: nn.Module, source: SourceCheckpoint, where: str) -> dict[str, str]:
    """Every tensor the model built from ``where`` has is stored, with its shape, and every
    stored tensor belongs to the model; returns model name → stored name."""
    names = stored_names(model, source.infos)
    state = model.state_dict(keep_vars=True)
    missing = [n for n in state if n not in names]
    extra = sorted(set(source.infos) - set(names.values()))
    wrong = [
        f"{n} {tuple(source.infos[s].shape)} stored, {tuple(state[n].shape)} built"
        for n, s in names.items()
        if n in state and tuple(state[n].shape) != source.infos[s].shape
    ]
    if missing or extra or wrong:
        parts = []
        for label, items in (("missing", missing), ("not in the model", extra), ("shape", wrong)):
            if items:
                more = " ..." if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise CheckpointError(
            f"the weights in {source.root} do not fit the model {where} describes "
            f"({'; '.join(parts)}); the files belong to another model or are damaged"
        )
    return names


def meta_inputs(model: nn.Module) -> tuple[Any, ...]:
    """Example inputs for tracing the meta model (inferred from its entry layer)."""
    return tuple(infer_example_inputs(model))


def plan_widen(
    model: nn.Module,
    source: SourceCheckpoint,
    names: dict[str, str],
    factor: Any,
    *,
    seed: int | None,
    symmetry: str,
) -> tuple[nn.Module, WidenPlan, list[OutputTensor]]:
    """Widen the meta ``model``; (the grown meta model with its updated description, the plan,
    the output tensors in source order). Each output tensor is its source tensor grown by its
    axis maps (:func:`.grow.grow_into`: what in-memory widen computes, bit for bit)."""
    transform = WidenTransform(factor, seed=seed, symmetry=symmetry)
    adapter = adapter_for(model)
    inputs = meta_inputs(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GrowthWarning)
        plan, _ = transform.plan(model, inputs, verify=False)
        adapt = transform.prepare_adapter(model)
        result, _ = transform.apply(model, inplace=False)
        if adapt is not None:
            adapt(result)
        adapter.check_grown(result, transform.what)
        transform.finish(result)
    record_step(model, result, transform.op, transform.recipe_args(), inputs)
    for w in caught:  # a partial growth is reported once, as in memory
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    # axis maps are keyed by one name of each tensor; a tied tensor's other names share them
    by_id: dict[int, list[AxisMap]] = {}
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    for name, axes in transform.axis_maps.items():
        if name in named:
            by_id[id(named[name])] = axes
    new_state = result.state_dict(keep_vars=True)
    stored_as = {s: n for n, s in names.items()}  # stored name → one model name
    outputs = []
    digests: dict[int, str] = {}
    for stored in source.infos:
        info = source.infos[stored]
        model_name = stored_as[stored]
        axes = by_id.get(id(named.get(model_name)), [])
        shape = tuple(new_state[model_name].shape)
        make = _grower(source, stored, axes)
        scratch = scratch_bytes(info.shape, info.dtype, axes)
        key = fingerprint(stored, [_axis_key(a, digests) for a in axes])
        outputs.append(OutputTensor(stored, shape, info.dtype, make, scratch, key))
    return result, plan, outputs


def _axis_key(a: AxisMap, digests: dict[int, str]) -> list[Any]:
    """What ``a`` does to its tensor, with a digest of its unit map (one per map object)."""
    if id(a.map) not in digests:
        filled = getattr(a.map, "filled", None)
        parts = [tensor_bytes(x) for x in (a.map.source, a.map.share, filled) if x is not None]
        digests[id(a.map)] = fingerprint(*parts)
    return [a.dim, a.reduce, a.fill, a.factor, digests[id(a.map)]]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The dtype, shape and bytes of a CPU tensor (for fingerprints)."""
    t = t.detach().contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else t.new_empty(0, dtype=torch.uint8)
    return f"{t.dtype}{tuple(t.shape)}".encode() + raw.numpy().tobytes()


def _grower(
    source: SourceCheckpoint, name: str, axes: list[AxisMap]
) -> Callable[[torch.Tensor | None], Grown]:
    def make(buffer: torch.Tensor | None) -> Grown:
        return grow_into(source.tensor(name), axes, buffer)

    return make


def resident_blocks(model: nn.Module, after: Any) -> list[str]:
    """The blocks deepen may copy, whose weights must be in memory while it plans: the last
    child of each Sequential/ModuleList and each child whose next sibling has another type (the
    ends of runs of blocks), and the modules ``after`` names. One block each."""
    names: list[str] = []
    for cname, container in model.named_modules():
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        keys = list(container._modules)
        for i, key in enumerate(keys):
            last = i + 1 == len(keys)
            if last or type(container._modules[keys[i + 1]]) is not type(container._modules[key]):
                names.append(f"{cname}.{key}" if cname else key)
    targets = [after] if isinstance(after, str) else list(after or [])
    names += [t if isinstance(t, str) else t.where for t in targets]
    return names


def plan_deepen(
    model: nn.Module,
    source: SourceCheckpoint,
    names: dict[str, str],
    *,
    after: Any,
    n: int,
    inputs: tuple[Any, ...],
) -> tuple[nn.Module, DeepenPlan, list[OutputTensor]]:
    """Deepen ``model`` (parameters on meta, buffers on the CPU) on sample ``inputs``: the
    blocks it may copy are read into memory, every other module's weights only while the
    recording forward runs it. Returns (the deeper model, the plan, the output tensors in
    module order): kept tensors are read from ``source`` under their new names, the new
    blocks' tensors (copies with their branch ends zeroed) come from memory."""
    hooks = LazyWeights(model, source.tensor, source.infos, resident=resident_blocks(model, after))
    transform = DeepenTransform(after, n)
    try:
        plan, _ = transform.plan(model, inputs, verify=False)
    finally:
        hooks.remove()
        source.close()
    adapt = transform.prepare_adapter(model)
    result, _ = transform.apply(model, inplace=False)
    if adapt is not None:
        adapt(result)
    adapter_for(model).check_grown(result, transform.what)
    record_step(model, result, transform.op, transform.recipe_args(), inputs)
    # which old tensor each kept tensor of the result is (deepcopy's memo: old id → copy)
    old_names = {id(t): name for name, t in model.state_dict(keep_vars=True).items()}
    origin = {id(new): old_names[old] for old, new in transform.memo.items() if old in old_names}
    outputs: list[OutputTensor] = []
    seen: set[int] = set()
    for name, t in result.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue  # a tied tensor is stored once, under its first name
        seen.add(id(t))
        old = origin.get(id(t))
        if t.device.type == "meta":
            if old is None:
                raise CheckpointError(f"internal error: {name} has neither an origin nor a value")
            stored = names[old]
            info = source.infos[stored]
            make = _grower(source, stored, [])
            key = fingerprint(stored)
            outputs.append(OutputTensor(name, info.shape, info.dtype, make, key=key))
        else:
            value = t.detach()
            outputs.append(
                OutputTensor(name, tuple(value.shape), value.dtype, lambda _, v=value: v)
            )
    return result, plan, outputs
