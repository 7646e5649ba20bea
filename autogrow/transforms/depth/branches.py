"""Residual blocks: which modules are blocks, and which zeroings make a copy the identity.

A block candidate is a non-leaf child of a Sequential/ModuleList, called once, that maps its
input to its input's shape. Its residual branch ends are found by trying candidates (every
Linear/Conv, or a library's own linear layer) on the block's recorded input, last registered
first, and keeping the smallest set whose zeroing (weight, bias, and the bias and running mean
of a norm right after) makes the copy an identity; a block for which none does is not used.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...adapters import ModelAdapter
from ...tracing import eval_mode
from ..layer_kinds import FEATURE_NORMS, LINEAR_OR_CONV, norm_width
from .points import InsertionKind, InsertionPoint
from .recorder import (
    ModuleCall,
    Recording,
    clone,
    hidden,
    is_container,
    parent_of,
    plain_sequential,
    run_between,
)

BLOCK_TOL = 1e-6  # largest relative error of a zeroed copy that counts as the identity


def block_candidate(model: nn.Module, name: str, rec: Recording) -> bool:
    """A non-leaf child of a Sequential/ModuleList, called once, mapping x to x's shape."""
    parent, _ = parent_of(model, name)
    module = model.get_submodule(name)
    call = rec.calls.get(name)
    if parent is None or not is_container(parent) or call is None or call.calls != 1:
        return False
    if plain_sequential(module) or isinstance(module, nn.ModuleList):
        return False
    if not any(True for _ in module.children()) or not any(True for _ in module.parameters()):
        return False
    x = call.args[0] if call.args else None
    y = hidden(call.output)
    return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape


def zero_branch(block: nn.Module, names: Sequence[str], adapter: ModelAdapter) -> None:
    """Zero each named Linear/Conv (weight and bias) and the bias/mean of a norm right after,
    and turn off the ``inplace`` flag of every submodule: a branch that starts with
    ``ReLU(inplace=True)`` overwrites the block's input, which the shortcut adds back, so the
    zeroed copy would compute ``relu(x)``, not ``x``. Out of place, it computes the same
    values in the original block and the identity in the copy."""
    for m in block.modules():
        if type(getattr(m, "inplace", None)) is bool:
            m.inplace = False
    modules = list(block.named_modules())
    index = {n: i for i, (n, _) in enumerate(modules)}
    with torch.no_grad():
        for name in names:
            m = block.get_submodule(name)
            params = adapter.branch_end_params(m)
            if params is not None:  # a library layer that names its own output parameters
                for p in params:
                    getattr(m, p).zero_()
                continue
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()
            width = _out_width(m, adapter)
            for _, nxt in modules[index[name] + 1 :]:
                if any(True for _ in nxt.children()):
                    continue
                if isinstance(nxt, FEATURE_NORMS) and norm_width(nxt) == width:
                    if getattr(nxt, "bias", None) is not None:
                        nxt.bias.zero_()
                    if getattr(nxt, "running_mean", None) is not None:
                        nxt.running_mean.zero_()
                break


def _is_branch_end(m: nn.Module, adapter: ModelAdapter) -> bool:
    """A Linear/Conv, or a library's own linear layer or output parameters (its adapter
    says)."""
    return (
        isinstance(m, LINEAR_OR_CONV)
        or adapter.linear_width(m) is not None
        or adapter.branch_end_params(m) is not None
    )


def _out_width(m: nn.Module, adapter: ModelAdapter) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    width = adapter.linear_width(m)
    return width if width is not None else m.out_channels  # type: ignore[return-value]


def _identity_error(
    block: nn.Module,
    zero: Sequence[str],
    call: ModuleCall,
    adapter: ModelAdapter,
    discarded: frozenset[int] = frozenset(),
) -> float:
    trial = copy.deepcopy(block)
    zero_branch(trial, zero, adapter)
    y = hidden(call.output)
    try:
        with eval_mode(trial), torch.no_grad():
            # copies: an in-place op of the block (``F.relu(x, inplace=True)``, ``x += ...``)
            # would otherwise overwrite the very values its output is compared with
            out = trial(clone(y), *clone(call.args[1:]), **clone(call.kwargs))
    except Exception:  # noqa: BLE001 - a block that cannot take its own output is not usable
        return float("inf")
    if isinstance(call.output, tuple) and isinstance(out, tuple) and len(out) == len(call.output):
        # the other outputs (a position bias passed along) must come out unchanged too, but
        # for those the model discards (attention weights it only keeps when asked to)
        pairs = enumerate(zip(out[1:], call.output[1:]), start=1)
        if any(_differs(a, b) for i, (a, b) in pairs if i not in discarded):
            return float("inf")
    out = hidden(out)
    if not isinstance(out, torch.Tensor) or out.shape != y.shape:
        return float("inf")
    scale = y.abs().max().item()
    diff = (out.double() - y.double()).abs().max().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape != b.shape or not torch.equal(a, b)
    return type(a) is not type(b)


def discarded_outputs(model: nn.Module, name: str, rec: Recording) -> frozenset[int]:
    """The positions (after the first) of block ``name``'s tuple output that no sibling of
    its container receives: where every block of the container ran and each passed none of
    those outputs to the next block (as argument or keyword), the model discards them, so a
    copy may return other values there. Empty when this cannot be seen (fewer than two
    blocks ran), so that every output must then come out unchanged."""
    parent, _ = parent_of(model, name)
    if parent is None or not is_container(parent):
        return frozenset()
    prefix = name.rpartition(".")[0]
    names = [f"{prefix}.{k}" if prefix else k for k in parent._modules]
    calls = [rec.calls.get(n) for n in names]
    if len(calls) < 2 or any(c is None or not isinstance(c.output, tuple) for c in calls):
        return frozenset()
    width = min(len(c.output) for c in calls)  # type: ignore[union-attr, arg-type]
    passed: set[int] = set()
    for a, b in zip(calls, calls[1:]):
        received = [v for v in _tensors((b.args, b.kwargs))]  # type: ignore[union-attr]
        for i in range(1, width):
            out = a.output[i]  # type: ignore[union-attr]
            if not isinstance(out, torch.Tensor) or any(
                v.shape == out.shape and torch.equal(v, out) for v in received
            ):
                passed.add(i)
    return frozenset(range(1, width)) - passed


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _find_zero_set(
    block: nn.Module, call: ModuleCall, adapter: ModelAdapter, discarded: frozenset[int]
) -> tuple[str, ...] | None:
    """The branch-ending Linear/Convs whose zeroing makes ``block`` the identity, or None."""
    candidates = [n for n, m in block.named_modules() if _is_branch_end(m, adapter)]
    chosen: list[str] = []
    current = _identity_error(block, chosen, call, adapter, discarded)
    improved = True
    while improved and current > BLOCK_TOL:  # again: one zeroing can help only after another
        improved = False
        for name in reversed(candidates):
            if current <= BLOCK_TOL:
                break
            if name in chosen:
                continue
            err = _identity_error(block, [*chosen, name], call, adapter, discarded)
            if err < current * (1 - 1e-3):
                chosen.append(name)
                current, improved = err, True
    if current > BLOCK_TOL:
        return None
    if not chosen:  # already the identity (a zeroed copy, zero_init_residual): copy as is
        return ()
    for name in sorted(chosen, key=candidates.index):  # drop redundant (earlier) zeroings
        rest = [c for c in chosen if c != name]
        if rest and _identity_error(block, rest, call, adapter, discarded) <= BLOCK_TOL:
            chosen = rest
    return tuple(sorted(chosen, key=candidates.index))


def block_point(
    model: nn.Module, name: str, rec: Recording, *, outermost: bool = False
) -> InsertionPoint | None:
    """The block point for block ``name`` (named after its stage when it ends it), or None.

    ``outermost``: a layer of a library's layer stack is a block even though it holds
    residual blocks (its attention and MLP sublayers), because the library counts layers.
    A block whose container's loop runs other modules between the blocks is none: a new
    block would bring another call of them.
    """
    parent, _ = parent_of(model, name)
    if parent is not None and run_between(rec, name.rpartition(".")[0], list(parent._modules)):
        return None
    if outermost and block_candidate(model, name, rec):
        discarded = discarded_outputs(model, name, rec)
        zero = _find_zero_set(model.get_submodule(name), rec.calls[name], rec.adapter, discarded)
    else:
        zero = _zero_set(model, name, rec)
    if zero is None:
        return None
    block = model.get_submodule(name)
    parent, attr = parent_of(model, name)
    last = list(parent._modules)[-1] == attr  # type: ignore[union-attr]
    where = name.rpartition(".")[0] if last else name
    zeroed = f"{', '.join(zero)} zeroed" if zero else "its branch already zero"
    what = f"a copy of {name} ({type(block).__name__}) with {zeroed}"
    return InsertionPoint(where, InsertionKind.BLOCK, what, True, zero)


def _zero_set(model: nn.Module, name: str, rec: Recording) -> tuple[str, ...] | None:
    """The zeroings that make block ``name`` the identity; None for a non-block.

    A module holding a residual block itself (a whole encoder, a stage wrapper) is not a
    block: depth goes into its innermost residual blocks.
    """
    if name not in rec.zero_sets:
        result = None
        if block_candidate(model, name, rec):
            prefix = f"{name}."
            inner = sorted(d for d in rec.keep if d.startswith(prefix))
            if all(_zero_set(model, d, rec) is None for d in inner):
                call, discarded = rec.calls[name], discarded_outputs(model, name, rec)
                result = _find_zero_set(model.get_submodule(name), call, rec.adapter, discarded)
        rec.zero_sets[name] = result
    return rec.zero_sets[name]


def run_ends(model: nn.Module, rec: Recording) -> list[str]:
    """Block candidates that end a run of same-type, shape-preserving siblings."""
    ends = []
    for cname, container in model.named_modules():
        if not is_container(container):
            continue
        keys = list(container._modules)
        for i, key in enumerate(keys):
            name = f"{cname}.{key}" if cname else key
            if not block_candidate(model, name, rec):
                continue
            nxt = None
            if i + 1 < len(keys):
                nxt = f"{cname}.{keys[i + 1]}" if cname else keys[i + 1]
            same_next = (
                nxt is not None
                and type(model.get_submodule(nxt)) is type(container[i])
                and block_candidate(model, nxt, rec)
            )
            if not same_next:
                ends.append(name)
    return ends
