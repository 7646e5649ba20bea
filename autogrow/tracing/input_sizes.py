"""Sizes forward code computes from its module's input: ``C // self.num_heads``.

torch.export specialises every size, so ``self.v(x).reshape(B, N, self.num_heads, C //
self.num_heads)`` (``B, N, C = x.shape``) reaches an exported graph as ``reshape(v, [1, 196,
4, 48])``: nothing says that 48 follows the width of ``x``. torch.fx keeps that arithmetic
as nodes. :class:`ModuleSizes` traces one module alone with fx (arguments with a default take
it; a condition on a traced value takes its ``False`` branch; an argument annotated as a
tuple of fixed length iterates as one) and tells, for an op found
again by its source line and its sizes, whether a size is ``input.shape[dim] // divisor`` of
one of the module's inputs (:class:`InputSize`).
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from .trace import _Tracer, quiet_torch


@dataclass(frozen=True)
class InputSize:
    """``shape[dim] // divisor`` of the module's input number ``arg`` (``divisor`` 1: the
    size itself)."""

    arg: int
    dim: int
    divisor: int = 1


def stack_frames(text: str | None) -> set[str]:
    """Every 'file.py:12' of a recorded stack trace.

    >>> sorted(stack_frames('File "/m.py", line 3, in f\\n  x\\nFile "/n.py", line 9, in g'))
    ['/m.py:3', '/n.py:9']
    """
    return {f"{f}:{n}" for f, n in re.findall(r'File "([^"]+)", line (\d+)', text or "")}


def input_size(node: Any, inputs: list[fx.Node]) -> InputSize | None:
    """``node`` as :class:`InputSize` when it is ``x.shape[d]``, ``x.size(d)`` or either
    floor-divided by an int, ``x`` being one of ``inputs``; None otherwise."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function" and node.target is operator.floordiv:
        base, divisor = node.args
        inner = input_size(base, inputs)
        if inner is None or type(divisor) is not int or inner.divisor != 1 or divisor < 1:
            return None
        return InputSize(inner.arg, inner.dim, divisor)
    if node.op == "call_function" and node.target is operator.getitem:
        shape, dim = node.args
        if (
            isinstance(shape, fx.Node)
            and shape.op == "call_function"
            and shape.target is getattr
            and shape.args[1] == "shape"
            and shape.args[0] in inputs
            and type(dim) is int
        ):
            return InputSize(inputs.index(shape.args[0]), dim)
        return None
    if node.op == "call_method" and node.target == "size" and len(node.args) == 2:
        x, dim = node.args
        if x in inputs and type(dim) is int:
            return InputSize(inputs.index(x), dim)
    return None


class ModuleSizes:
    """One module traced alone by fx, for :meth:`find`. ``ModuleSizes.of`` returns None when
    fx cannot trace it."""

    def __init__(self, graph: fx.Graph) -> None:
        self.graph = graph
        self.inputs = [n for n in graph.nodes if n.op == "placeholder"]

    @classmethod
    def of(cls, module: nn.Module, leaf_types: tuple[type, ...] = ()) -> ModuleSizes | None:
        params = inspect.signature(module.forward).parameters.values()
        concrete = {
            p.name: p.default
            for p in params
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        try:
            with _restored(module), quiet_torch():
                tracer = _Lenient(leaf_types, record_stack_traces=True)
                tracer.hints = _type_hints(module.forward)
                graph = tracer.trace(module, concrete_args=concrete or None)
        except Exception:  # noqa: BLE001 - then nothing is known about this module's sizes
            return None
        return cls(graph)

    def find(self, frames: set[str], sizes: tuple, index: int) -> InputSize | None:
        """What the size at ``index`` of an exported op's ``sizes`` (its size arguments after
        the input tensor, flattened) is computed from: the fx nodes written at one of
        ``frames`` with as many sizes and no literal that differs must all agree."""
        found: set[InputSize | None] = set()
        for n in self.graph.nodes:
            leaves = _leaves(n)
            if len(leaves) != len(sizes) or not stack_frames(n.meta.get("stack_trace")) & frames:
                continue
            if any(type(a) is int and a != b for a, b in zip(leaves, sizes)):
                continue
            found.add(input_size(leaves[index], self.inputs))
        return found.pop() if len(found) == 1 else None


class _Lenient(_Tracer):
    """Takes the ``False`` branch of a condition on a traced value (``if self.cache is None or
    self.cache.shape[1] != N``) instead of failing: only the size arithmetic of the ops on
    the path taken is read, and a wrong path leaves ops unmatched (nothing is tied)."""

    proxy_buffer_attributes = True  # a buffer's methods called with a traced size

    hints: dict[str, Any] = {}  # noqa: RUF012 - the traced forward's annotations, set per trace

    def to_bool(self, obj: fx.Proxy) -> bool:
        return False

    def iter(self, obj: fx.Proxy) -> Iterator:
        n = _tuple_length(obj.node, self.hints)
        return super().iter(obj) if n is None else iter([obj[i] for i in range(n)])

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)


class _SizedProxy(fx.Proxy):
    """An argument annotated with a tuple of fixed length (``size: Tuple[int, int]``) has
    that length, so ``reshape(B, C, *size)`` traces."""

    def __len__(self) -> int:
        n = _tuple_length(self.node, getattr(self.tracer, "hints", {}))
        return super().__len__() if n is None else n


def _type_hints(fn: Any) -> dict[str, Any]:
    """``fn``'s annotations, strings (``from __future__ import annotations``) evaluated."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not evaluate says nothing
        return {}


def _tuple_length(node: fx.Node, hints: dict[str, Any]) -> int | None:
    if node.op != "placeholder":
        return None
    annotation = hints.get(str(node.target), node.type)
    items = typing.get_args(annotation)
    if typing.get_origin(annotation) is not tuple or not items or ... in items:
        return None
    return len(items)


def _leaves(node: fx.Node) -> tuple:
    """The op's size arguments after the input tensor, flattened (nodes kept)."""
    out: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            out.append(v)

    walk(tuple(node.args[1:]))
    return tuple(out)


@contextlib.contextmanager
def _restored(module: nn.Module) -> Iterator[None]:
    """Forward code may cache values while it is traced (a dict of biases, a buffer of
    indices): every submodule's public attributes are put back afterwards."""
    saved = []
    for m in module.modules():
        state = dict(vars(m))
        dicts = {k: dict(v) for k, v in state.items() if not k.startswith("_") and type(v) is dict}
        saved.append((m, state, dicts))
    try:
        yield
    finally:
        for m, state, dicts in saved:
            vars(m).clear()
            vars(m).update(state)
            for k, contents in dicts.items():
                state[k].clear()
                state[k].update(contents)
