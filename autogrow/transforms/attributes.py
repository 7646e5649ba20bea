"""Where a literal size in an fx graph comes from: probing module attributes.

torch.fx evaluates Python integers while it traces, so ``x.split([1, self.dim, self.dim])`` or
``x.view(B, N, self.num_heads, -1)`` reach the graph as plain literals. When widening would
change such a size, :class:`AttributeProber` finds the attribute the forward code read: it
changes one ``int`` attribute (or one ``int`` inside a tuple or list attribute) of the modules
that wrote the op, or of their direct children, re-traces the model symbolically (no
computation) and watches the literal. The attribute that moves it, by a relation
``literal = slope · attribute + offset`` that two probes (×2 and ×3) agree on, is its source;
two attributes that happen to hold the same value (``num_heads == window_size``) are told apart
because only one of them moves the literal. Probing runs only for literals that block a width
change, and its traces are cached per probe.

After widening, :meth:`AttributeProber.check` re-traces once with every attribute update
applied and requires that each recorded literal now equals its axis's new size and that no
other integer in the graph moved, so the model's own code computes the new sizes.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torch import fx, nn

from ..tracing.trace import Traced, _Tracer, quiet_torch

Leaves = tuple[Any, ...]
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)


def size_leaves(node: fx.Node) -> Leaves:
    """The sizes an op was given, in order: ``node.args`` after the input tensor, then the
    keyword arguments, flattened through lists, tuples and slices; an int or a float stays
    itself (a float derived from a width, ``head_dim ** -0.5``, must not move either),
    anything else (a node, None, a dtype) is ``None``. ``index`` of a
    :class:`~autogrow.rules.context.LiteralSize` counts in this sequence."""
    out: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, slice):
            walk((v.start, v.stop, v.step))
        else:
            out.append(v if type(v) in (int, float) else None)

    walk(tuple(node.args[1:]))
    walk(tuple(node.kwargs.values()))
    return tuple(out)


@dataclass(frozen=True)
class AttrSource:
    """``literal = slope · module.attr[index] + offset`` (``index`` None: the attribute is an
    int itself, else the position of the int inside a tuple or list attribute)."""

    module: str
    attr: str
    index: int | None
    old: int
    slope: Fraction
    offset: Fraction

    @property
    def name(self) -> str:
        where = f"{self.module}." if self.module else ""
        item = f"[{self.index}]" if self.index is not None else ""
        return f"{where}{self.attr}{item}"

    def solve(self, literal: int) -> int | None:
        """The attribute value that makes the literal ``literal``; None if not a positive int."""
        value = (literal - self.offset) / self.slope
        if value.denominator != 1 or value <= 0 or self.slope * value + self.offset != literal:
            return None
        return int(value)


class AttributeProber:
    """Probes the attributes of ``model`` (traced by fx as ``graph``) for the sources of
    literals. ``AttributeProber.of(traced)`` probes a whole traced model;
    ``AttributeProber.submodule(model, path, leaf_types)`` traces one submodule on its own
    (for a model only torch.export could capture: its literals are found again in the
    submodule's fx trace by source line)."""

    def __init__(
        self,
        model: nn.Module,
        graph: fx.Graph,
        leaf_types: tuple[type, ...] = (),
        concrete: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.leaf_types = leaf_types
        self.concrete = concrete  # forward's arguments fixed while tracing (fx concrete_args)
        self.base = {n.name: (n.op, n.target, size_leaves(n)) for n in graph.nodes}
        self.nodes = {n.name: n for n in graph.nodes}
        self._probes: dict[tuple, dict[str, tuple] | None] = {}
        self.arithmetic: set[str] = set()  # nodes computing a number, not a tensor
        self._references: dict[str, dict] = {}  # check: the trace with the bound updates
        self._hints: set[tuple] = set()  # (module class, relative path, attr, index) found
        self.probes = 0  # how many re-traces ran (for tests and benchmarks)

    @classmethod
    def of(cls, traced: Traced) -> AttributeProber:
        prober = cls(traced.model, traced.graph, traced.leaf_types)
        # arithmetic on sizes (C // self.num_heads): its result is a value computed at run
        # time, which the rules already follow; the check compares only what ops are given
        prober.arithmetic = {
            n.name for n in traced.graph.nodes if type(traced.meta.get(n)) in (int, float, bool)
        }
        return prober

    @classmethod
    def submodule(
        cls, model: nn.Module, path: str, leaf_types: tuple[type, ...]
    ) -> AttributeProber | None:
        """A prober of ``model.get_submodule(path)`` traced alone, with source lines; None if
        fx cannot trace it."""
        try:
            module = model.get_submodule(path)
            # arguments with a default take it (``forward(x, x_prev=None)`` branches on it)
            params = inspect.signature(module.forward).parameters.values()
            concrete = {
                p.name: p.default
                for p in params
                if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            }
            with _patched(module, []), quiet_torch():
                tracer = _Tracer(leaf_types, record_stack_traces=True)
                graph = tracer.trace(module, concrete_args=concrete or None)
        except Exception:  # noqa: BLE001 - then this submodule cannot be probed
            return None
        return cls(module, graph, leaf_types, concrete or None)

    def nodes_at(self, frames: set[str], sizes: Leaves, index: int) -> list[fx.Node]:
        """The nodes of this trace that can be an exported op given ``sizes`` (its
        :func:`size_leaves`) from code at ``frames`` ('file.py:12', its stack): written under
        one of those lines, with as many sizes, the same literal at ``index`` and no literal
        that differs (a size fx sees computed from a shape is a node, not a number)."""
        out = []
        for n in self.nodes.values():
            leaves = self.base[n.name][2]
            if (
                len(leaves) == len(sizes)
                and leaves[index] == sizes[index]
                and all(a is None or a == b for a, b in zip(leaves, sizes))
                and stack_frames(n.meta.get("stack_trace")) & frames
            ):
                out.append(n)
        return out

    # -- tracing ----------------------------------------------------------------------------
    def _trace(self, changes: list[tuple[str, str, Any]]) -> dict[str, tuple] | None:
        """Every node's (op, target, sizes) with the attributes set to new values, or None if
        the model does not trace with them."""
        self.probes += 1
        try:
            with _patched(self.model, changes), quiet_torch():
                graph = _Tracer(self.leaf_types).trace(self.model, concrete_args=self.concrete)
        except Exception:  # noqa: BLE001 - an attribute value the model rejects is no source
            return None
        return {n.name: (n.op, n.target, size_leaves(n)) for n in graph.nodes}

    def _probe(self, module: str, attr: str, index: int | None, value: int) -> dict | None:
        key = (module, attr, index, value)
        if key not in self._probes:
            self._probes[key] = self._trace(
                [(module, attr, _with(self._get(module, attr), index, value))]
            )
        return self._probes[key]

    def _get(self, module: str, attr: str) -> Any:
        return getattr(self.model.get_submodule(module), attr)

    # -- sources ----------------------------------------------------------------------------
    def sources(self, node: fx.Node, value: int, index: int | None) -> list[AttrSource]:
        """The attributes that move the literal ``value`` at ``node`` (at ``index`` of its
        sizes, or wherever it appears when None), from the innermost module that wrote the
        op outwards; the first module level with any is returned, which may hold several (the
        literal depends on each of them).

        To stay cheap, a level is first probed with all its candidates changed at once,
        each by another prime factor (one trace: if the literal stays, none of them is its
        source), and an attribute found for an earlier literal in a module of the same class
        (the next block of a stage) is tried first.
        """
        base = self.base.get(node.name)
        if base is None:
            return []
        leaves = base[2]
        if index is not None:
            positions = [index]
        else:
            positions = list(range(len(leaves)))
        positions = [p for p in positions if p < len(leaves) and _is(leaves[p], value)]
        if not positions:
            return []
        for level in _module_stack(node):
            try:
                kind = type(self.model.get_submodule(level))
            except AttributeError:
                continue
            cands = list(self._candidates(level, value))
            if not cands:
                continue
            for c in cands:
                if (kind, _relative(level, c[0]), c[1], c[2]) in self._hints:
                    found = self._relation(node.name, positions, *c)
                    if found is not None:
                        return [found]
            # distinct prime factors, so that a ratio of two candidates (in_channels //
            # num_paths) cannot stay put by both moving alike
            changes = [
                (m, a, i, v * _PRIMES[k % len(_PRIMES)]) for k, (m, a, i, v) in enumerate(cands)
            ]
            joint = self._trace(_joint(changes, self._get))
            if joint is not None and _same_op(base, joint.get(node.name)):
                if all(joint[node.name][2][p] == value for p in positions):
                    continue  # changing every candidate at once leaves the literal alone
            found = [
                s for c in cands if (s := self._relation(node.name, positions, *c)) is not None
            ]
            if found:
                if len(found) == 1:
                    self._hints.add(
                        (kind, _relative(level, found[0].module), found[0].attr, found[0].index)
                    )
                return found
        return []

    def _candidates(self, path: str, value: int) -> Iterator[tuple[str, str, int | None, int]]:
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            return
        owners = [(path, module)]
        owners += [(f"{path}.{n}" if path else n, m) for n, m in module.named_children()]
        for name, m in owners:
            for attr, v in vars(m).items():
                if attr.startswith("_"):
                    continue
                if type(v) is int:
                    if _related(v, value):
                        yield name, attr, None, v
                elif isinstance(v, (tuple, list)) and v and all(type(i) is int for i in v):
                    for i, item in enumerate(v):
                        if _related(item, value):
                            yield name, attr, i, item

    def _relation(
        self, name: str, positions: list[int], module: str, attr: str, index: int | None, v: int
    ) -> AttrSource | None:
        literal = self.base[name][2][positions[0]]
        moved = None
        for k in (2, 3):
            probe = self._probe(module, attr, index, k * v)
            if probe is None or not _same_op(self.base[name], probe.get(name)):
                return None
            now = probe[name][2]
            values = {now[p] for p in positions}
            if len(values) != 1 or None in values:
                return None  # the positions do not move alike: not one relation
            (new,) = values
            if k == 2:
                if new == literal:
                    return None  # this attribute does not move the literal
                moved = new
            else:
                slope = Fraction(moved - literal, v)
                if new - moved != slope * v:
                    return None  # not a linear relation
                return AttrSource(module, attr, index, v, slope, literal - slope * v)
        return None

    # -- the final check --------------------------------------------------------------------
    def check(
        self,
        updates: list[tuple[str, str, Any]],
        expected: dict[tuple[str, int], set[int]],
        reference: list[tuple[str, str, Any]],
        required: list[tuple[str, list[int], int]] = (),  # type: ignore[assignment]
    ) -> str | None:
        """Re-trace with ``updates`` applied: each size in ``expected`` ((node name, size
        index) → the values it may take) must take one of them, every other size in the graph
        must be as in the trace with only the ``reference`` updates (the attributes the rules
        bound), and each ``required`` (node name, indices, value) must have the value at one
        of the indices. Returns what went wrong, or None."""
        after = self._trace(updates)
        # a model that asserts on its attributes may not trace with the bound ones alone
        key = repr(reference)
        if key not in self._references:
            self._references[key] = (self._trace(reference) if reference else None) or self.base
        ref = self._references[key]
        if after is None:
            return "the model no longer traces with the updated attributes"
        if set(after) != set(ref):
            return "the updated attributes change the structure of the traced graph"
        for name, old in ref.items():
            now = after[name]
            if not _same_op(old, now):
                return f"the updated attributes change op {name!r}"
            if name in self.arithmetic:
                continue
            for i, (was, new) in enumerate(zip(old[2], now[2])):
                want = expected.get((name, i), {was})
                if new not in want:
                    return f"op {name!r} gets the size {new} where {min(want)} is needed"
        for name, indices, value in required:
            if all(after[name][2][i] != value for i in indices):
                return f"op {name!r} does not get the size {value}"
        return None


def _relative(level: str, module: str) -> str:
    return module[len(level) :].lstrip(".") if level else module


def _joint(changes: list[tuple[str, str, int | None, int]], get: Any) -> list[tuple[str, str, Any]]:
    """One (module, attr, value) per attribute, items of a tuple attribute combined."""
    values: dict[tuple[str, str], Any] = {}
    for module, attr, index, v in changes:
        values[(module, attr)] = _with(values.get((module, attr), get(module, attr)), index, v)
    return [(m, a, v) for (m, a), v in values.items()]


def stack_frames(text: str | None) -> set[str]:
    """Every 'file.py:12' of a recorded stack trace."""
    return {f"{f}:{n}" for f, n in re.findall(r'File "([^"]+)", line (\d+)', text or "")}


def _is(leaf: Any, value: int) -> bool:
    return type(leaf) is int and leaf == value


def _same_op(a: tuple | None, b: tuple | None) -> bool:
    return a is not None and b is not None and a[:2] == b[:2] and len(a[2]) == len(b[2])


def _related(v: int, value: int) -> bool:
    """Whether attribute value ``v`` may size the literal ``value``: a multiple or divisor
    of it, or it plus a few fused units (``num_heads + 2``: one key and one value head)."""
    return v > 1 and (value % v == 0 or v % value == 0 or abs(value - v) <= MAX_FUSED_OFFSET)


MAX_FUSED_OFFSET = 2


def _with(old: Any, index: int | None, value: int) -> Any:
    if index is None:
        return value
    items = list(old)
    items[index] = value
    return type(old)(items)


def _module_stack(node: fx.Node) -> list[str]:
    stack = [str(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    return [*dict.fromkeys(reversed(stack)), ""]


@contextlib.contextmanager
def _patched(model: nn.Module, changes: list[tuple[str, str, Any]]) -> Iterator[None]:
    """Set the attributes for one probe trace, and afterwards restore them and every module's
    public state: forward code that caches values while tracing (timm's LeViT keeps an
    ``attention_bias_cache`` dict) must not keep the probe's proxies."""
    state = []
    for m in model.modules():
        public = {k: v for k, v in vars(m).items() if not k.startswith("_")}
        dicts = {k: dict(v) for k, v in public.items() if isinstance(v, dict)}
        state.append((m, public, dicts))
    try:
        for module, attr, value in changes:
            setattr(model.get_submodule(module), attr, value)
        yield
    finally:
        for m, public, dicts in state:
            for k in [k for k in vars(m) if not k.startswith("_") and k not in public]:
                delattr(m, k)
            for k, v in public.items():
                if k in dicts:
                    v.clear()
                    v.update(dicts[k])
                if vars(m).get(k) is not v:
                    setattr(m, k, v)
