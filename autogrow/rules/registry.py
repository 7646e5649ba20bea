"""The rule registry: one small function per operation, whichever tracer recorded it.

A rule is written once against a *canonical call*: the op's arguments bound by name to one
signature. ``nn.Conv2d`` module calls (through a module adapter), ``F.conv2d(x, self.weight)``
in user code and ``aten.conv2d`` in an exported graph all reach the same ``conv`` rule.

A rule returns what the node produces: a :class:`TensorValue` (one term per dimension), a
container of them, or a plain Python value. It states facts through the
:class:`~autogrow.rules.context.RuleContext` it receives (``unify``, ``freeze``, ``role`` ...).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from ..axes.terms import Term

if TYPE_CHECKING:
    from .context import RuleContext


class Dynamic(int):
    """An int computed at run time by the traced code (``x.size(1)``), not a literal.

    ``term`` is the axis (or product of axes) the size was read from, when known: a view that
    uses it requires its output axis to keep that size, so the two axes are tied.
    ``quotient`` is ``(term, k)`` for such a size floor-divided by an int (``C //
    self.num_heads``): a view that uses it sizes a head by the width ``term`` over ``k`` heads.
    """

    term: Term | None
    quotient: tuple[Term, int] | None

    def __new__(
        cls, value: int, term: Term | None = None, quotient: tuple[Term, int] | None = None
    ) -> Dynamic:
        obj = super().__new__(cls, value)
        obj.term = term
        obj.quotient = quotient
        return obj


@dataclass
class TensorValue:
    """A traced tensor: one axis term per dimension; ``param`` names a parameter or buffer;
    ``constant`` holds the values of a small integer constant the code wrote (an index list
    such as ``x[..., [-2], :]``, which torch.export lifts to a tensor), else None.

    A rule receives its tensor arguments as ``TensorValue``s and returns one per output, with
    ``shape`` equal to the traced one (see ``docs/inference.md``, writing a rule).

    >>> import torch, autogrow
    >>> seen = []
    >>> def record(call, ctx):  # an elementwise rule: the output carries the input's axes
    ...     x = call.args["input"]
    ...     seen.append((x.shape, x.ndim, x.dim(-1), x.param))
    ...     return autogrow.TensorValue(list(x.terms), call.out.shape)
    >>> registry = autogrow.default_registry.copy()
    >>> _ = registry.rule("erfc", signature="input", names=(torch.special.erfc,))(record)
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(3, 4)
    ...     def forward(self, x):
    ...         return torch.special.erfc(self.lin(x))
    >>> _ = autogrow.analyze(Net(), (torch.randn(2, 3),), registry=registry)
    >>> seen
    [((2, 4), 2, 1, None)]
    """

    terms: list[Term]
    shape: tuple[int, ...]
    param: str | None = None
    # The values of a small integer constant the code wrote (an index list), else None.
    constant: torch.Tensor | None = None

    @property
    def ndim(self) -> int:
        """The number of dimensions, ``len(shape)``.

        >>> TensorValue([], (2, 8)).ndim
        2
        """
        return len(self.shape)

    def dim(self, d: int) -> int:
        """A possibly negative dimension index, made non-negative.

        >>> TensorValue([], (2, 8)).dim(-1)
        1
        """
        return d + self.ndim if d < 0 else d


@dataclass
class Call:
    """One op as a rule sees it: canonical name, arguments bound by name, and where it is.

    ``args`` holds the op's arguments bound by the rule's signature (tensors as
    :class:`TensorValue`), ``out`` the recorded output (shape and dtype), ``module`` the
    qualified name of the innermost module the op belongs to, ``source`` the source line.

    >>> import torch, autogrow
    >>> seen = []
    >>> def spy(call, ctx):
    ...     seen.append((call.name, sorted(call.args), call.out.shape, call.where()))
    ...     return autogrow.TensorValue(list(call.args["input"].terms), call.out.shape)
    >>> registry = autogrow.default_registry.copy()
    >>> _ = registry.rule("my_erfc", signature="input", names=(torch.special.erfc,))(spy)
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(3, 4)
    ...     def forward(self, x):
    ...         return torch.special.erfc(self.lin(x))
    >>> _ = autogrow.analyze(Net(), (torch.randn(2, 3),), registry=registry)
    >>> seen
    [('my_erfc', ['input'], (2, 4), "op 'my_erfc'")]
    """

    name: str
    node: fx.Node
    args: dict[str, Any]
    out: Any  # the recorded output (TensorMeta or a structure of them)
    module: str | None = None  # qualified name of the innermost module the op belongs to
    module_obj: nn.Module | None = None  # set for module calls
    source: str | None = None
    locate: Callable[[fx.Node], str | None] | None = field(default=None, repr=False)

    def where(self, full: bool = False) -> str:
        """'op conv2d in module layer1.0.conv1 (file.py:12: code)' for messages; ``full``
        looks the source line up if it is not known yet (costs a second trace, once).

        >>> Call("conv2d", None, {}, None, module="layer1.0.conv1").where()
        "op 'conv2d' in module 'layer1.0.conv1'"
        """
        if full and self.source is None and self.locate is not None:
            self.source, self.locate = self.locate(self.node), None
        text = f"op '{self.name}'"
        if self.module:
            text += f" in module '{self.module}'"
        if self.source:
            text += f" ({self.source})"
        return text


@dataclass(frozen=True)
class ParamRef:
    """A module adapter's way to name one of the module's parameters."""

    name: str


Rule = Callable[[Call, "RuleContext"], Any]
ModuleAdapter = Callable[[nn.Module, str, tuple, dict], "tuple[str, dict[str, Any]]"]
ModuleConstraint = Callable[[nn.Module, str, "RuleContext"], None]


def _signature(spec: str) -> inspect.Signature:
    return inspect.signature(eval(f"lambda {spec}: None"))  # noqa: S307 - our own literals


@dataclass
class RuleRegistry:
    """Maps op names, callables and module types to rules. ``default_registry`` is the built-in
    one; pass your own (a ``copy()``) to keep registrations out of global state.

    >>> import torch, autogrow
    >>> registry = autogrow.default_registry.copy()
    >>> @registry.rule("my_erfc", signature="input", names=(torch.special.erfc,))
    ... def erfc_rule(call, ctx):  # elementwise: the output carries the input's units
    ...     return autogrow.TensorValue(list(call.args["input"].terms), call.out.shape)
    >>> registry.binding(torch.special.erfc)[0]
    'my_erfc'
    >>> autogrow.default_registry.binding(torch.special.erfc) is None  # the default is untouched
    True
    """

    rules: dict[str, Rule] = field(default_factory=dict)
    bindings: dict[Any, tuple[str, inspect.Signature]] = field(default_factory=dict)
    adapters: dict[type, ModuleAdapter] = field(default_factory=dict)
    module_rules: dict[type, Rule] = field(default_factory=dict)
    constraints: dict[type, ModuleConstraint] = field(default_factory=dict)

    def copy(self) -> RuleRegistry:
        """An independent copy (the five dicts are copied; the rules themselves are shared).

        >>> import autogrow
        >>> mine = autogrow.default_registry.copy()
        >>> mine is not autogrow.default_registry and mine.rules == autogrow.default_registry.rules
        True
        """
        return RuleRegistry(
            dict(self.rules),
            dict(self.bindings),
            dict(self.adapters),
            dict(self.module_rules),
            dict(self.constraints),
        )

    def rule(
        self,
        canonical: str,
        *,
        signature: str,
        names: tuple[Any, ...] = (),
        also: dict[Any, str] | None = None,
    ) -> Callable[[Rule], Rule]:
        """Register ``fn`` for ``canonical`` and every name/callable in ``names`` (bound with
        ``signature``) and in ``also`` (each bound with its own signature, same argument names)."""

        def register(fn: Rule) -> Rule:
            self.rules[canonical] = fn
            sig = _signature(signature)
            for key in (canonical, *names):
                self.bindings[key] = (canonical, sig)
            for key, spec in (also or {}).items():
                self.bindings[key] = (canonical, _signature(spec))
            return fn

        return register

    def module(self, *types: type) -> Callable[[ModuleAdapter], ModuleAdapter]:
        """Register an adapter turning a call of a module of these types into a canonical call."""

        def register(fn: ModuleAdapter) -> ModuleAdapter:
            for t in types:
                self.adapters[t] = fn
            return fn

        return register

    def constraint(self, *types: type) -> Callable[[ModuleConstraint], ModuleConstraint]:
        """Register what a module of these types requires of its parameters and attributes
        when the tracer went through its forward instead of recording one call of it
        (torch.export decomposes it into ATen ops): ``fn(module, qualname, ctx)`` runs once
        per such module after the graph walk, ties its parameters' axes and binds the size
        attributes its forward reads, so the decomposed ops and the module stay consistent.

        >>> import torch, autogrow
        >>> registry = autogrow.default_registry.copy()
        >>> _ = registry.constraint(torch.nn.MultiheadAttention)(lambda m, name, ctx: None)
        >>> registry.constraint_for(torch.nn.MultiheadAttention(8, 2)) is not None
        True
        """

        def register(fn: ModuleConstraint) -> ModuleConstraint:
            for t in types:
                self.constraints[t] = fn
            return fn

        return register

    def constraint_for(self, m: nn.Module) -> ModuleConstraint | None:
        """The constraint registered for ``m``'s type or its nearest base class, if any."""
        for t in type(m).__mro__:
            if t in self.constraints:
                return self.constraints[t]
        return None

    def register_module_rule(self, module_type: type, fn: Rule) -> None:
        """A rule for a user module type; such modules become leaves of the fx trace.

        The rule's ``call.args`` are ``{"args": (...), "kwargs": {...}}`` and ``call.module_obj``
        is the module instance.
        """
        self.module_rules[module_type] = fn

    def leaf_types(self) -> tuple[type, ...]:
        return tuple(self.module_rules)

    # -- lookup ------------------------------------------------------------------------------
    def for_module(self, m: nn.Module) -> tuple[str, Any] | None:
        for t in type(m).__mro__:
            if t in self.module_rules:
                return "module", self.module_rules[t]
            if t in self.adapters:
                return "adapter", self.adapters[t]
        return None

    def binding(self, target: Any) -> tuple[str, inspect.Signature] | None:
        try:
            if target in self.bindings:
                return self.bindings[target]
        except TypeError:  # unhashable target
            return None
        qualified = _qualified_name(target)  # rules bound by "package.module.function"
        if qualified is not None and qualified in self.bindings:
            return self.bindings[qualified]
        name = target_name(target)
        return self.bindings.get(name) if name else None


class RuleSet:
    """A rule module's registrations, recorded by the same decorators as :class:`RuleRegistry`
    and installed into a registry on demand (:meth:`install`): importing a rule module
    changes no registry.

    >>> import torch
    >>> rules = RuleSet()
    >>> @rules.rule("my_erfc", signature="input", names=(torch.special.erfc,))
    ... def erfc_rule(call, ctx):
    ...     return TensorValue(list(call.args["input"].terms), call.out.shape)
    >>> registry = RuleRegistry()
    >>> rules.install(registry)
    >>> registry.binding(torch.special.erfc)[0]
    'my_erfc'
    """

    def __init__(self) -> None:
        self._installs: list[Callable[[RuleRegistry], None]] = []

    def rule(self, canonical: str, **options: Any) -> Callable[[Rule], Rule]:
        """As :meth:`RuleRegistry.rule`, deferred."""

        def record(fn: Rule) -> Rule:
            self._installs.append(lambda registry: registry.rule(canonical, **options)(fn))
            return fn

        return record

    def module(self, *types: type) -> Callable[[ModuleAdapter], ModuleAdapter]:
        """As :meth:`RuleRegistry.module`, deferred."""

        def record(fn: ModuleAdapter) -> ModuleAdapter:
            self._installs.append(lambda registry: registry.module(*types)(fn))
            return fn

        return record

    def constraint(self, *types: type) -> Callable[[ModuleConstraint], ModuleConstraint]:
        """As :meth:`RuleRegistry.constraint`, deferred."""

        def record(fn: ModuleConstraint) -> ModuleConstraint:
            self._installs.append(lambda registry: registry.constraint(*types)(fn))
            return fn

        return record

    def install(self, registry: RuleRegistry) -> None:
        """Register every recorded rule and module adapter in ``registry``."""
        for install in self._installs:
            install(registry)


def _qualified_name(target: Any) -> str | None:
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{module}.{qualname}"


_OPERATOR_NAMES = {
    operator.add: "add",
    operator.iadd: "add",
    operator.sub: "sub",
    operator.isub: "sub",
    operator.mul: "mul",
    operator.imul: "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    operator.matmul: "matmul",
    operator.neg: "neg",
    operator.getitem: "getitem",
    operator.pow: "pow",
}


def target_name(target: Any) -> str | None:
    """The name rules are looked up by: an ATen schema name, a method or a function name."""
    if isinstance(target, str):  # call_method
        return target[:-1] if target.endswith("_") and not target.startswith("_") else target
    if target in _OPERATOR_NAMES:
        return _OPERATOR_NAMES[target]
    schema = getattr(target, "_schema", None)
    if schema is not None:  # an ATen OpOverload
        name = schema.name.split("::")[-1]
        return name[:-1] if name.endswith("_") and not name.startswith("_") else name
    return getattr(target, "__name__", None)
