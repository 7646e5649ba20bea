"""Net2WiderNet for any traced model: analyse → plan widths → map units → copy → verify."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping
from typing import Any, overload

import torch
from torch import nn

from ..adapters import adapter_for
from ..errors import ConstraintError, HardcodedSizeError, InvalidArgumentError
from ..graph import WidthGraph, analyze_traced
from ..rules import RuleRegistry, get_default_registry
from ..rules.context import REDUCE, Analysis
from ..tracing import prepare_inputs
from ..verify import check_tolerance, run
from ..verify import verify as verify_outputs
from .axis_maps import AxisMap, grow_tensor, grown_tensors, param_axis_maps  # noqa: F401
from .lineage import record_step
from .mapping import SYMMETRIES, UnitMap, new_size, sample_map, term_map
from .optimizer import check_optimizer, grow_optimizer
from .plan import Factor, check_factor, plan_widths, report_partial_growth


@overload
def widen(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = ...,
    seed: int | None = ...,
    symmetry: str = ...,
    noise: float = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    registry: RuleRegistry | None = ...,
    optimizer: None = ...,
) -> nn.Module: ...


@overload
def widen(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = ...,
    seed: int | None = ...,
    symmetry: str = ...,
    noise: float = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    registry: RuleRegistry | None = ...,
    optimizer: torch.optim.Optimizer,
) -> tuple[nn.Module, torch.optim.Optimizer]: ...


def widen(
    model: nn.Module,
    factor: Factor,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    seed: int | None = None,
    symmetry: str = "split",
    noise: float = 0.0,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    registry: RuleRegistry | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module | tuple[nn.Module, torch.optim.Optimizer]:
    """Return a wider model of the same class that computes the same function.

    Args:
        model: any ``nn.Module``; it is never modified unless ``inplace=True``.
        factor: a float > 1 widens every widenable group by that factor, rounded to each
            group's constraints; a dict maps group names or module names to a new width (int:
            for a module, its output width) or a factor (float).
        example_inputs: positional inputs for tracing and verification; inferred from the
            first Conv/Linear/Embedding when omitted.
        seed: seeds the random unit mappings and shares (None: a fresh random seed).
        symmetry: ``"split"`` divides each replicated unit's outgoing weights into unequal
            random shares (exact; replicas diverge in training); ``"none"`` divides equally.
        noise: if > 0, Gaussian noise of ``noise × std`` is added to replicated outgoing
            weights *after* verification, so the result is only approximately equal.
        inplace: modify and return ``model`` itself (restored if verification fails).
        verify: compare outputs in eval mode and raise VerificationError beyond the tolerance.
        tolerance: the max relative error ``verify`` accepts; None: set by the model's dtype,
            1e-4 in float32, 8 × eps in float16/bfloat16 (``autogrow.verify.default_tolerance``).
        registry: rules to use instead of ``autogrow.rules.default_registry``.
        optimizer: a ``torch.optim.SGD``/``Adam``/``AdamW`` over ``model``'s parameters;
            widen then returns ``(model, new_optimizer)``, the new optimizer over the new
            parameters with its state grown by the same mapping (docs/training-state.md).
            The given optimizer is left untouched, also with ``inplace=True``.

    Returns:
        The widened model (a deep copy, or ``model`` itself with ``inplace=True``) whose
        parameters, buffers and size attributes (``in_features``, ``out_channels``,
        ``num_features``, ``normalized_shape``, ``num_heads``, ...) are replaced; with
        ``optimizer``, the pair ``(model, optimizer)``.

    Raises:
        InvalidArgumentError: a factor that is not a finite number > 1, an unknown
            ``symmetry``, a negative ``noise``, a model that is not a module.
        GroupNotFoundError: a dict key names neither a width group nor a module in one.
        FrozenGroupError: a dict key names a frozen group (the message says why it is frozen).
        ConstraintError: a width the group's constraints do not allow (uniform groups need
            multiples, widths only grow), or nothing would change.
        HardcodedSizeError: ``forward`` writes a size as a literal that widening would change.
        VerificationError: the widened model differs from the original beyond the tolerance.
        TracingError, ExampleInputsError: as for :func:`autogrow.analyze`.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> wide = autogrow.widen(net, 2.0, seed=0)
    >>> wide[0].out_features, wide[2].in_features
    (16, 16)
    """
    _check_options(factor, symmetry, noise)
    check_tolerance(tolerance)
    if optimizer is not None:
        check_optimizer(optimizer, model)  # before anything is changed
    inputs = prepare_inputs(model, example_inputs)
    graph = analyze_traced(model, inputs, registry or get_default_registry(), reference=verify)
    widths = plan_widths(graph, factor)
    if seed is None:  # drawn up front so that the recipe records the seed actually used
        seed = random.SystemRandom().randrange(2**62)
    generator = torch.Generator().manual_seed(seed)
    maps = {
        gid: sample_map(
            graph.by_id(gid).width,
            n,
            uniform=graph.by_id(gid).uniform is not None,
            symmetry=symmetry,
            generator=generator,
        )
        for gid, n in sorted(widths.items())
    }
    axis_maps = param_axis_maps(graph.analysis, maps)
    tensors = grown_tensors(graph.analysis, maps, axis_maps)
    attrs = attribute_updates(graph, widths)
    reference = graph.analysis.traced.reference_output
    if verify and reference is None:
        reference = run(model, inputs)
    old_params = dict(model.named_parameters(remove_duplicate=False))  # before inplace edits
    # The model's library may have to describe the grown model (a config): raises before any change.
    adapter_update = adapter_for(model).prepare_widen(
        model,
        graph.analysis,
        lambda term: new_size(graph.store, term, widths),
        _new_shapes(model, tensors),
    )
    result, undo = (_apply_inplace if inplace else _apply_copy)(model, tensors, attrs)
    if adapter_update is not None:
        undo = chain_undo(adapter_update(result), undo)
    if verify:
        try:
            verify_outputs(result, inputs, reference, what="widened", tolerance=tolerance)
        except Exception:
            undo()
            raise
    report_partial_growth(graph, factor, widths)  # a float factor some groups could not take
    if noise > 0:
        _add_noise(result, graph.analysis, maps, noise, generator)
    factor_arg = dict(factor) if isinstance(factor, Mapping) else factor
    args = {"factor": factor_arg, "seed": seed, "symmetry": symmetry, "noise": noise}
    record_step(model, result, "widen", {**args, "custom_registry": registry is not None}, inputs)
    if optimizer is not None:
        return result, grow_optimizer(optimizer, old_params, result, axis_maps)
    return result


def _new_shapes(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer name of ``model`` (tied names included) → its grown shape."""
    named = _named_tensors(model)
    grown = {id(named[n]): t.shape for n, t in tensors.items() if n in named}
    return {n: tuple(grown.get(id(t), t.shape)) for n, t in named.items()}


def chain_undo(first: Any, second: Any) -> Any:
    """One undo function that runs ``first`` then ``second`` (widen and deepen both stack
    a transformers config undo on top of the tensor undo)."""

    def undo() -> None:
        first()
        second()

    return undo


def _check_options(factor: Any, symmetry: str, noise: float) -> None:
    if not isinstance(factor, Mapping):
        check_factor(factor)
    if symmetry not in SYMMETRIES:
        raise InvalidArgumentError(f"symmetry must be one of {SYMMETRIES}, got {symmetry!r}")
    if (
        isinstance(noise, bool)
        or not isinstance(noise, (int, float))
        or not math.isfinite(noise)
        or noise < 0
    ):
        raise InvalidArgumentError(f"noise must be a finite number >= 0, got {noise!r}")


def attribute_updates(graph: WidthGraph, widths: dict[int, int]) -> list[tuple[str, str, Any]]:
    """(module, attribute, new value) for every size attribute that forward code reads."""
    analysis, store = graph.analysis, graph.store
    model = analysis.traced.model

    def size(term: Any) -> int:
        return new_size(store, term, widths)

    updates: dict[tuple[str, str], Any] = {}

    def put(module: str, attr: str, value: Any, why: str) -> None:
        old = updates.get((module, attr))
        if old is not None and old != value:
            raise ConstraintError(
                f"module {module!r} attribute {attr!r} would need two values ({old} and {value}) "
                f"after widening ({why}); exclude one of its groups from widening"
            )
        updates[(module, attr)] = value

    for b in analysis.attrs:
        put(b.module, b.attr, b.compute(size), f"{b.module}.{b.attr}")
    for lit in analysis.literals:
        new = size(lit.term)
        if not isinstance(lit.value, int):  # sized from another axis: the sizes must agree
            other = size(lit.value)
            if new != other:
                raise ConstraintError(
                    f"{lit.call.where(full=True)} sizes an axis from another tensor's size, "
                    "which would be "
                    f"{other} while this axis becomes {new}. Widen the groups involved by the "
                    "same factor (a float factor does), or leave them out."
                )
            continue
        if new == lit.value:
            continue
        found = _attribute_for_literal(model, lit.call.node, lit.value)
        if found is None and lit.soft:
            continue  # probably computed from a shape at run time; verification will tell
        if found is None:
            groups = sorted(
                {g.name for a in store.leaf_atoms(lit.term) if (g := graph.by_id(a.id))}
            )
            raise HardcodedSizeError(
                f"{lit.call.where(full=True)} hard-codes the size {lit.value}, which becomes "
                f"{new} when "
                f"group(s) {', '.join(groups) or '?'} widen. Compute it from the tensor instead "
                "(x.flatten(1), x.view(x.size(0), -1)), keep it in a module attribute, or leave "
                "those groups out: widen(model, {...}) with the groups you want."
            )
        put(found[0], found[1], new, lit.call.where())
    return [(m, a, v) for (m, a), v in updates.items()]


def _attribute_for_literal(model: nn.Module, node: Any, value: int) -> tuple[str, str] | None:
    """An int attribute equal to ``value`` on the modules whose forward wrote the literal."""
    stack = [str(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    for path in [*reversed(stack), ""]:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        names = [
            k
            for k, v in vars(module).items()
            if not k.startswith("_") and type(v) is int and v == value
        ]
        if len(names) == 1:
            return path, names[0]
        if names:
            return None  # ambiguous: several attributes hold that value
    return None


def _locate(model: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    module_name, _, attr = qualname.rpartition(".")
    return model.get_submodule(module_name), attr


def _new_value(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    module, attr = _locate(model, name)
    old = module._parameters.get(attr)
    if old is not None:
        return nn.Parameter(tensor, requires_grad=old.requires_grad)
    return tensor


def _set(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, attr = _locate(model, name)
    if attr in module._parameters:
        module._parameters[attr] = value  # type: ignore[assignment]
    else:
        module._buffers[attr] = value


def _apply_copy(model: nn.Module, tensors: dict[str, torch.Tensor], attrs: list) -> tuple:
    originals = _named_tensors(model)
    # Pre-seeding deepcopy's memo puts the new tensors in place without copying the old ones.
    memo = {id(originals[n]): _new_value(model, n, t) for n, t in tensors.items()}
    result = copy.deepcopy(model, memo)
    for module, attr, value in attrs:
        setattr(result.get_submodule(module), attr, value)
    return result, lambda: None


def _apply_inplace(model: nn.Module, tensors: dict[str, torch.Tensor], attrs: list) -> tuple:
    originals = _named_tensors(model)
    # Every name of a tied tensor (transformers' lm_head / wte) must get the new one.
    aliases = {n: [a for a, t in originals.items() if t is originals[n]] for n in tensors}
    old_attrs = [(m, a, getattr(model.get_submodule(m), a)) for m, a, _ in attrs]
    for name, t in tensors.items():
        value = _new_value(model, name, t)
        for alias in aliases[name]:
            _set(model, alias, value)
    for module, attr, value in attrs:
        setattr(model.get_submodule(module), attr, value)

    def undo() -> None:
        for name in tensors:
            for alias in aliases[name]:
                _set(model, alias, originals[name])
        for module, attr, value in old_attrs:
            setattr(model.get_submodule(module), attr, value)

    return model, undo


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    return named


def _add_noise(
    model: nn.Module,
    analysis: Analysis,
    maps: dict[int, UnitMap],
    noise: float,
    gen: torch.Generator,
) -> None:
    store = analysis.store
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, info in analysis.params.items():
            p = params.get(name)
            if p is None or not p.is_floating_point():
                continue
            for d, term in enumerate(info.terms):
                if REDUCE not in info.roles[d] or not any(
                    a.id in maps for a in store.leaf_atoms(term)
                ):
                    continue
                m = term_map(store, term, maps)
                counts = torch.bincount(m.source)
                replicated = (counts[m.source] > 1).to(p.dtype)
                shape = [1] * p.ndim
                shape[d] = -1
                scale = noise * float(p.std()) if p.numel() > 1 else noise
                draw = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.add_(draw * replicated.view(shape) * scale)
