"""Running a model whose parameters stay on disk: each module's own parameters are read just
before its forward and dropped (back to the meta device) right after, so a forward holds one
module's weights at a time (plus the activations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..recipe import CheckpointError

Loader = Callable[[str], torch.Tensor]


def stored_names(model: nn.Module, stored: Iterable[str]) -> dict[str, str]:
    """Every parameter and persistent buffer name of ``model`` (tied aliases included) → the
    name it is stored under (a tied tensor is stored once, under one of its names)."""
    have = set(stored)
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    out: dict[str, str] = {}
    for names in aliases.values():
        found = next((n for n in names if n in have), None)
        if found is not None:
            # a name stored itself keeps its own copy (some checkpoints store tied tensors twice)
            out.update({n: n if n in have else found for n in names})
    for name in model.state_dict(keep_vars=True):
        if name not in out and name in have:
            out[name] = name
    return out


class LazyWeights:
    """Hooks that give each module its parameters from a checkpoint only while it runs.

    ``model``'s parameters must be on the meta device; persistent buffers are read once.
    ``dtype`` casts floating tensors (None: as stored). Modules under a name in ``resident``
    get their weights for good (read once, no hooks). :meth:`remove` takes the hooks off.
    """

    def __init__(
        self,
        model: nn.Module,
        load: Loader,
        stored: Iterable[str],
        *,
        dtype: torch.dtype | None = None,
        resident: Iterable[str] = (),
    ) -> None:
        self.load, self.dtype = load, dtype
        names = stored_names(model, stored)
        keep = tuple(resident)
        self.handles: list[Any] = []
        missing = [n for n in model.state_dict() if n not in names]
        if missing:
            raise CheckpointError(
                f"the checkpoint stores no tensor for {', '.join(missing[:3])}"
                f"{' ...' if len(missing) > 3 else ''}, which the model its config builds has"
            )
        for mname, module in model.named_modules():
            prefix = f"{mname}." if mname else ""
            for bname in list(module._buffers):
                if f"{prefix}{bname}" in names and bname not in module._non_persistent_buffers_set:
                    module._buffers[bname] = self._read(names[f"{prefix}{bname}"])
            own = {p: names[f"{prefix}{p}"] for p, v in module._parameters.items() if v is not None}
            if not own:
                continue
            if any(mname == k or mname.startswith(f"{k}.") for k in keep):
                for p, stored_as in own.items():
                    module._parameters[p] = nn.Parameter(self._read(stored_as), False)
                continue
            self.handles.append(module.register_forward_pre_hook(self._pre(own)))
            self.handles.append(module.register_forward_hook(self._post(own)))
        self._saved: dict[int, dict[str, Any]] = {}

    def _read(self, name: str) -> torch.Tensor:
        t = self.load(name)
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t

    def _pre(self, own: dict[str, str]) -> Callable[..., None]:
        def pre(module: nn.Module, args: Any) -> None:
            saved = self._saved.setdefault(id(module), {})
            for p, stored_as in own.items():
                current = module._parameters[p]
                if current is not None and current.device.type != "meta":
                    continue  # a module called again inside itself: already loaded
                saved[p] = current
                module._parameters[p] = nn.Parameter(self._read(stored_as), False)

        return pre

    def _post(self, own: dict[str, str]) -> Callable[..., None]:
        def post(module: nn.Module, args: Any, output: Any) -> None:
            for p, meta in self._saved.pop(id(module), {}).items():
                module._parameters[p] = meta

        return post

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
