"""Recording one eval forward of the model, and the module-tree queries deepening asks of it.

:class:`Recording` keeps, per module, its first call (args, kwargs, output), how often it ran
and with which output shapes, and the order in which leaf modules finished. Block candidates
and identity stacks are decided on these values; the recorded model output is the reference
that verification compares the deepened model with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...adapters import adapter_for
from ...tracing import eval_mode

# Modules a loop may run once more without changing anything: the identity in eval mode.
_HARMLESS_REPEATS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass
class ModuleCall:
    """A module's first call, and what later calls had in common with it."""

    args: tuple
    kwargs: dict
    output: Any  # a clone for children of containers, else a meta tensor (shape and dtype)
    device: torch.device | None = None
    calls: int = 1
    shapes: set = field(default_factory=set)


class Recording:
    """Per-module first call (args, kwargs, output), call counts and leaf order.

    Only the children of Sequential/ModuleList containers (the candidate blocks) keep cloned
    values; every other module keeps its output's shape and dtype, so memory stays bounded.
    """

    def __init__(self, model: nn.Module, inputs: tuple) -> None:
        self.model = model
        self.adapter = adapter_for(model)
        self.calls: dict[str, ModuleCall] = {}
        self.order: list[str] = []  # leaf modules, in the order their forward ended
        self.events: list[str] = []  # every leaf call's end, repeats included
        self.spans: dict[str, tuple[int, int]] = {}  # container child: its first call's events
        self.keep = {
            f"{name}.{key}" if name else key
            for name, m in model.named_modules()
            if is_container(m)
            for key in m._modules
        }
        handles = []
        for name, m in model.named_modules():
            if name in self.keep:
                handles.append(m.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            handles.append(m.register_forward_hook(self._post(name), with_kwargs=True))
        self._pending: dict[str, tuple] = {}
        self.zero_sets: dict[str, tuple[str, ...] | None] = {}
        try:
            with eval_mode(model), torch.no_grad():
                self.output = model(*inputs)
        finally:
            for h in handles:
                h.remove()

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            if name not in self.calls and name not in self._pending:
                self._pending[name] = (clone(args), clone(kwargs))
                self.spans[name] = (len(self.events), len(self.events))

        return hook

    def _post(self, name: str):
        def hook(module, args, kwargs, output):
            is_tensor = isinstance(output, torch.Tensor)
            shape = tuple(output.shape) if is_tensor else None
            call = self.calls.get(name)
            leaf = not any(True for _ in module.children())
            if leaf:
                self.events.append(name)
            if call is None:
                if name in self.spans:
                    self.spans[name] = (self.spans[name][0], len(self.events))
                a, k = self._pending.pop(name, ((), {}))
                if name in self.keep:
                    value = clone(output)
                elif is_tensor:
                    value = torch.empty(shape, dtype=output.dtype, device="meta")
                else:
                    value = None
                device = output.device if is_tensor else None
                call = self.calls[name] = ModuleCall(a, k, value, device)
                if leaf:
                    self.order.append(name)
            else:
                call.calls += 1
            call.shapes.add(shape)

        return hook


def run_between(rec: Recording, container: str, keys: list[str]) -> list[str]:
    """Modules outside ``container`` that forward runs between every two consecutive children
    (``keys``, in order): the model's own loop over the blocks calls them once per block, so
    a new block brings one more call of each. A module run in only some gaps (a norm after the
    middle block) is not per block; eval-mode identities (dropout) are left out."""
    names = [f"{container}.{k}" if container else k for k in keys]
    spans = [rec.spans.get(n) for n in names]
    inside = f"{container}." if container else ""
    gaps: list[list[str]] = []
    for a, b in zip(spans, spans[1:]):
        if a is None or b is None:
            return []
        gap = []
        for leaf in rec.events[a[1] : b[0]]:
            if leaf.startswith(inside) or leaf in gap:
                continue
            if not isinstance(rec.model.get_submodule(leaf), _HARMLESS_REPEATS):
                gap.append(leaf)
        gaps.append(gap)
    if not gaps:
        return []
    return [leaf for leaf in gaps[0] if all(leaf in gap for gap in gaps[1:])]


def clone(value: Any) -> Any:
    """A detached copy of every tensor in (nested tuples, lists and dicts of) ``value``."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(clone(v) for v in value)
    if isinstance(value, list):
        return [clone(v) for v in value]
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    return value


def hidden(output: Any) -> Any:
    """A block's output, or the first element of a tuple (a library's layers may return
    ``(hidden_states, ...)``)."""
    if isinstance(output, tuple) and output and not hasattr(output, "_fields"):
        return output[0]
    return output


def end_index(name: str, rec: Recording) -> int:
    """One past the position in ``rec.order`` of the last leaf of module ``name``."""
    prefix = f"{name}." if name else ""
    last = -1
    for i, leaf in enumerate(rec.order):
        if leaf == name or leaf.startswith(prefix):
            last = i
    return last + 1


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    """(parent module, attribute name) of submodule ``name``; (None, "") for the model."""
    if not name:
        return None, ""
    parent, _, attr = name.rpartition(".")
    return model.get_submodule(parent), attr


def is_container(m: nn.Module) -> bool:
    """An ``nn.Sequential`` or ``nn.ModuleList`` (whose children may be residual blocks)."""
    return isinstance(m, (nn.Sequential, nn.ModuleList))


def plain_sequential(m: nn.Module | None) -> bool:
    """An ``nn.Sequential`` whose forward is Sequential's own (new layers can go into it)."""
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward
