"""autogrow: grow trained PyTorch networks without losing what they learned (Net2Net).

>>> import torch, autogrow
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> wide = autogrow.widen(net, 1.5, seed=0)
>>> sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in net.parameters())
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._version import __version__  # noqa: F401 - autogrow.__version__
from .errors import (
    AutogrowError,
    ConstraintError,
    ExampleInputsError,
    FrozenGroupError,
    GroupNotFoundError,
    GrowthWarning,
    HardcodedSizeError,
    InvalidArgumentError,
    StructureError,
    TracingError,
    UnsupportedOpError,
    VerificationError,
)

if TYPE_CHECKING:  # imported on first use (below), so that `import autogrow` stays cheap
    from .checkpoint import CheckpointError, register_factory, seed_model, unregister_factory
    from .checkpoint.io import load, save
    from .checkpoint.stream import StreamResult, deepen_checkpoint, widen_checkpoint
    from .graph import WidthGraph, WidthGroup, analyze
    from .rules import Call, RuleRegistry, TensorValue
    from .training import Grower, op
    from .transforms.deepen import InsertionPoint, deepen, insertion_points
    from .transforms.stack import StackPlan, stack, stack_with_plan
    from .transforms.widen import widen

# Public name -> the module that defines it. Importing torch and the analysis engine takes
# seconds, so `import autogrow` (and `autogrow --help`) defers them to the first attribute use
# (PEP 562); the exceptions above are plain Python and stay eager.
_LAZY = {
    "CheckpointError": ".checkpoint",
    "seed_model": ".checkpoint",
    "register_factory": ".checkpoint",
    "unregister_factory": ".checkpoint",
    "load": ".checkpoint.io",
    "save": ".checkpoint.io",
    "StreamResult": ".checkpoint.stream",
    "deepen_checkpoint": ".checkpoint.stream",
    "widen_checkpoint": ".checkpoint.stream",
    "WidthGraph": ".graph",
    "WidthGroup": ".graph",
    "analyze": ".graph",
    "Call": ".rules",
    "RuleRegistry": ".rules",
    "TensorValue": ".rules",
    "Grower": ".training",
    "op": ".training",
    "InsertionPoint": ".transforms.deepen",
    "deepen": ".transforms.deepen",
    "insertion_points": ".transforms.deepen",
    "widen": ".transforms.widen",
    "StackPlan": ".transforms.stack",
    "stack": ".transforms.stack",
    "stack_with_plan": ".transforms.stack",
}


def __getattr__(name: str) -> Any:
    if name == "default_registry":  # built on first use (see autogrow.rules)
        from .rules import get_default_registry

        return get_default_registry()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "default_registry"})


def register_rule(target: Any, rule: Callable, *, signature: str = "*args, **kwargs") -> None:
    """Register ``rule`` for a function, method name or ATen op in the default registry.

    ``rule(call, ctx)`` receives the call with its arguments bound by ``signature`` and returns
    the output's :class:`TensorValue` (one axis term per dimension). For a registry that is not
    shared, use ``autogrow.default_registry.copy()`` and pass ``registry=`` to analyze/widen.

    Example (not run here: it changes the process-wide default registry):

    ```python
    import torch.nn.functional as F

    def glu_rule(call, ctx):
        x = call.args["input"]
        d = x.dim(call.args["dim"])
        a, b = ctx.store.split(x.terms[d], [x.shape[d] // 2] * 2, call.where())
        ctx.unify(a, b, call)  # out[i] = a[i] * sigmoid(b[i]): both halves carry the same units
        return autogrow.TensorValue([*x.terms[:d], a, *x.terms[d + 1 :]], call.out.shape)

    autogrow.register_rule(F.glu, glu_rule, signature="input, dim=-1")
    ```
    """
    from .rules import get_default_registry

    name = f"user:{getattr(target, '__qualname__', target)}"
    get_default_registry().rule(name, signature=signature, names=(target,))(rule)


def register_module_rule(module_type: type, rule: Callable) -> None:
    """Register ``rule`` for a module type; its modules become leaves of the fx trace.

    The rule's ``call.args`` are ``{"args": (...), "kwargs": {...}}``; ``call.module`` is the
    module's qualified name. Example (not run here: it changes the default registry):

    ```python
    class Scale(nn.Module):  # y = x * weight[c], one scale per channel
        def __init__(self, channels):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.weight[:, None, None]

    def scale_rule(call, ctx):
        x = call.args["args"][0]
        w = ctx.param(f"{call.module}.weight")
        ctx.unify(w.terms[0], x.terms[1], call)
        ctx.role(w, 0, "copy", call)
        return autogrow.TensorValue(list(x.terms), call.out.shape)

    autogrow.register_module_rule(Scale, scale_rule)
    ```
    """
    from .rules import get_default_registry

    get_default_registry().register_module_rule(module_type, rule)


__all__ = [
    "AutogrowError",
    "Call",
    "CheckpointError",
    "ConstraintError",
    "ExampleInputsError",
    "FrozenGroupError",
    "GroupNotFoundError",
    "Grower",
    "GrowthWarning",
    "HardcodedSizeError",
    "InsertionPoint",
    "InvalidArgumentError",
    "RuleRegistry",
    "StackPlan",
    "StreamResult",
    "StructureError",
    "TensorValue",
    "TracingError",
    "UnsupportedOpError",
    "VerificationError",
    "WidthGraph",
    "WidthGroup",
    "analyze",
    "deepen",
    "deepen_checkpoint",
    "default_registry",
    "insertion_points",
    "load",
    "op",
    "register_factory",
    "register_module_rule",
    "register_rule",
    "save",
    "seed_model",
    "stack",
    "stack_with_plan",
    "unregister_factory",
    "widen",
    "widen_checkpoint",
]
