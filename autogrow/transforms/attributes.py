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

import torch
from torch import fx, nn

from ..tracing.trace import Traced, _Tracer, eval_mode, quiet_torch

Leaves = tuple[Any, ...]
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)


def size_leaves(node: fx.Node) -> Leaves:
    """The sizes an op was given, in order: ``node.args`` after the input tensor, then the
    keyword arguments, flattened through lists, tuples and slices; an int or a float stays
    itself (a float derived from a width, ``head_dim ** -0.5``, must not move either),
    anything else (a node, None, a dtype) is ``None``. ``index`` of a
    :class:`~autogrow.rules.context.LiteralSize` counts in this sequence."""
    return tuple(v if type(v) in (int, float) else None for v in size_args(node))


def size_args(node: fx.Node) -> tuple[Any, ...]:
    """What :func:`size_leaves` reads, as given: ints, floats, nodes (a size computed at run
    time), ``None``."""
    out: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, slice):
            walk((v.start, v.stop, v.step))
        else:
            out.append(v)

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
        self.fixed = False  # some came from a run: a number in the trace may be one of them
        self.base = _sizes(graph)
        self.nodes = {n.name: n for n in graph.nodes}
        self._probes: dict[tuple, dict[str, tuple] | None] = {}
        self._joints: dict[tuple, bool | None] = {}  # _moves' answers
        self.arithmetic: set[str] = set()  # nodes computing a number, not a tensor
        self._references: dict[str, dict] = {}  # check: the trace with the bound updates
        # (module class, op, target, positions) → the sources (relative path, attr, index)
        # found for such a literal in a module of that class, tried first for the next one
        self._hints: dict[tuple, list[tuple]] = {}
        self.failed: list[str] = []  # the nodes the last check found wrong
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
        cls,
        model: nn.Module,
        path: str,
        leaf_types: tuple[type, ...],
        arguments: dict[str, Any] | None = None,
    ) -> AttributeProber | None:
        """A prober of ``model.get_submodule(path)`` traced alone, with source lines; None if
        fx cannot trace it. ``arguments``: values of forward's arguments that are no tensors
        (``size=(56, 56)``, see :func:`plain_call_arguments`), fixed while tracing."""
        try:
            module = model.get_submodule(path)
            # arguments with a default take it (``forward(x, x_prev=None)`` branches on it)
            params = inspect.signature(module.forward).parameters.values()
            concrete = {
                p.name: p.default
                for p in params
                if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            }
            concrete.update(arguments or {})
            with _patched(module, []), quiet_torch():
                tracer = _Tracer(leaf_types, record_stack_traces=True)
                graph = tracer.trace(module, concrete_args=concrete or None)
        except Exception:  # noqa: BLE001 - then this submodule cannot be probed
            return None
        prober = cls(module, graph, leaf_types, concrete or None)
        prober.fixed = bool(arguments)
        return prober

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
        return _sizes(graph)

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
        literal depends on each of them: ``self.dim - self.pdim``).

        To stay cheap, a level's candidates are first probed all at once, each changed by
        another prime factor (one trace: if the literal stays, none of them is its source):
        first the int attributes whose value divides the literal or is a multiple of it,
        then the others (a difference or a sum of attributes). The sources found for an
        earlier literal in a module of the same class (the next block of a stage) are tried
        first; one joint trace of the other candidates confirms that they are all.
        """
        base = self.base.get(node.name)
        if base is None:
            return []
        leaves = base[2]
        positions = [index] if index is not None else list(range(len(leaves)))
        positions = [p for p in positions if p < len(leaves) and _is(leaves[p], value)]
        if not positions:
            return []
        for level in _module_stack(node):
            try:
                kind = type(self.model.get_submodule(level))
            except AttributeError:
                continue
            cands = list(self._candidates(level))
            if not cands:
                continue
            hinted = self._hinted(node.name, positions, level, kind, cands)
            if hinted is not None:
                return hinted
            related = [c for c in cands if _related(c[3], value)]
            others = [c for c in cands if not _related(c[3], value)]
            found = []
            for tier in (related, others):
                moves = self._moves(node.name, positions, tier) if tier else False
                if moves is None and found:
                    continue  # the model rejects the joint change; the final check decides
                if moves is not False:
                    found += [s for c in tier if (s := self._relation(node.name, positions, *c))]
            if found:
                key = (kind, *base[:2], tuple(positions))
                self._hints[key] = [(_relative(level, s.module), s.attr, s.index) for s in found]
                return found
        return []

    def _hinted(
        self, name: str, positions: list[int], level: str, kind: type, cands: list
    ) -> list[AttrSource] | None:
        """The sources a module of the same class had, if this literal has the same ones (and
        no other candidate moves it); else None."""
        hint = self._hints.get((kind, *self.base[name][:2], tuple(positions)))
        if not hint:
            return None
        chosen = [c for c in cands if (_relative(level, c[0]), c[1], c[2]) in hint]
        if len(chosen) != len(hint):
            return None
        found = [s for c in chosen if (s := self._relation(name, positions, *c))]
        rest = [c for c in cands if c not in chosen]
        if len(found) != len(chosen) or (rest and self._moves(name, positions, rest) is True):
            return None
        return found

    def _moves(self, name: str, positions: list[int], cands: list) -> bool | None:
        """Whether changing all of ``cands`` at once (each by another prime factor, so that a
        ratio of two of them cannot stay put by both moving alike) moves the literal; None
        when the model does not trace with that change (or it changes the op)."""
        changes = [(m, a, i, v * _PRIMES[k % len(_PRIMES)]) for k, (m, a, i, v) in enumerate(cands)]
        key = (name, tuple(positions), repr(changes))
        if key not in self._joints:  # widen plans again when it keeps groups: asked again
            joint = self._trace(_joint(changes, self._get))
            if joint is None or not _same_op(self.base[name], joint.get(name)):
                self._joints[key] = None
            else:
                value = self.base[name][2][positions[0]]
                self._joints[key] = any(joint[name][2][p] != value for p in positions)
        return self._joints[key]

    def _candidates(self, path: str) -> Iterator[tuple[str, str, int | None, int]]:
        """The int attributes > 1 (or ints inside tuple or list attributes) of the module at
        ``path`` and of its direct children: (module, attr, index, value)."""
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
                    if v > 1:
                        yield name, attr, None, v
                elif isinstance(v, (tuple, list)) and v and all(type(i) is int for i in v):
                    for i, item in enumerate(v):
                        if item > 1:
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
        computed: Any = None,
    ) -> str | None:
        """Re-trace with ``updates`` applied: each size in ``expected`` ((node name, size
        index) → the values it may take) must take one of them, every other size in the graph
        must be as in the trace with only the ``reference`` updates (the attributes the rules
        bound), and each ``required`` (node name, indices, value) must have the value at one
        of the indices, and ``computed`` (see below) finds nothing wrong. Returns the first
        problem (``failed`` lists every node found wrong), or None."""
        after = self._trace(updates)
        self.failed = []
        # a model that asserts on its attributes may not trace with the bound ones alone
        key = repr(reference)
        if key not in self._references:
            self._references[key] = (self._trace(reference) if reference else None) or self.base
        ref = self._references[key]
        if after is None:
            return "the model no longer traces with the updated attributes"
        if set(after) != set(ref):
            self.failed = sorted(set(after) ^ set(ref))
            return "the updated attributes change the structure of the traced graph"
        # sizes computed at run time: ``computed(leaves)`` evaluates them with the numbers of
        # this trace → (problems, the arithmetic nodes it evaluated)
        problems, evaluated = ([], set())
        if computed is not None:
            problems, evaluated = computed(lambda n: after[n][2] if n in after else None)
        for name, old in ref.items():
            now = after[name]
            if not _same_op(old, now):
                problems.append((name, f"the updated attributes change op {name!r}"))
                continue
            if name in self.arithmetic:
                # a size computed at run time (C // self.num_heads): the rules followed the
                # value it had; an updated attribute in it would change that value unseen
                if old[2] != now[2] and name not in evaluated:
                    problems.append(
                        (name, f"the size computed by {name!r} would change with an attribute")
                    )
                continue
            for i, (was, new) in enumerate(zip(old[2], now[2])):
                want = expected.get((name, i), {was})
                if new not in want:
                    problems.append(
                        (name, f"op {name!r} gets the size {new} where {min(want)} is needed")
                    )
                    break
        for name, indices, value in required:
            if all(after[name][2][i] != value for i in indices):
                problems.append((name, f"op {name!r} does not get the size {value}"))
        self.failed = [name for name, _ in problems]
        return problems[0][1] if problems else None

    def movers(self, names: list[str], changed: list[tuple[str, str, int | None]]) -> set[tuple]:
        """The attributes among ``changed`` (module, attr, index) whose probe traces (×2)
        moved one of the nodes ``names`` or changed the graph's structure there; only probes
        already run are read."""
        out = set()
        for module, attr, index in changed:
            try:
                old = _item(self._get(module, attr), index)
            except AttributeError:
                continue
            probe = self._probes.get((module, attr, index, 2 * old))
            if probe is None:
                continue
            if any(probe.get(n) != self.base.get(n) for n in names):
                out.add((module, attr, index))
        return out


def _sizes(graph: fx.Graph) -> dict[str, tuple]:
    """Every node's (op, target, sizes) by name. fx names the tensor constants it meets
    ``_tensor_constant<n>`` with n counting on over traces of one model: they are renamed
    by their order in this trace, so that two traces compare node by node."""
    out = {}
    constants = 0
    for n in graph.nodes:
        name = n.name
        if re.fullmatch(r"_tensor_constant\d+", name):
            name, constants = f"_tensor_constant#{constants}", constants + 1
        target = n.target
        if isinstance(target, str) and re.fullmatch(r"_tensor_constant\d+", target):
            target = "_tensor_constant"
        out[name] = (n.op, target, size_leaves(n))
    return out


class SubmoduleProbers:
    """Per module path, an :class:`AttributeProber` of that module traced alone (None where fx
    cannot trace it, even with the values of its arguments that are no tensors)."""

    def __init__(self, traced: Traced, inputs: tuple | None) -> None:
        self.traced, self.inputs = traced, inputs
        self.probers: dict[str, AttributeProber | None] = {}
        self._arguments: dict[str, dict[str, Any]] | None = None
        # shared: the next block of a stage has its own prober
        self._hints: dict[tuple, list[tuple]] = {}

    def get(self, path: str) -> AttributeProber | None:
        """The prober of the module at ``path``, built on first use."""
        if path not in self.probers:
            model, leaf_types = self.traced.model, self.traced.leaf_types
            prober = AttributeProber.submodule(model, path, leaf_types)
            if prober is None and self.inputs is not None:
                # forward(x, size) iterating ``size``: one run of the model records such
                # arguments of every module in the graph, for this and later literals
                if self._arguments is None:
                    paths = {
                        str(p)
                        for n in self.traced.graph.nodes
                        for p, _ in (n.meta.get("nn_module_stack") or {}).values()
                    }
                    self._arguments = plain_call_arguments(model, paths, self.inputs)
                if self._arguments.get(path):
                    prober = AttributeProber.submodule(
                        model, path, leaf_types, self._arguments[path]
                    )
            if prober is not None:
                prober._hints = self._hints
            self.probers[path] = prober
        return self.probers[path]


def plain_call_arguments(
    model: nn.Module, paths: set[str], inputs: tuple
) -> dict[str, dict[str, Any]]:
    """Per module at ``paths``: the arguments of its first call, in one eval-mode run of
    ``model`` on ``inputs``, that hold no tensor (``forward(x, size)`` with ``size=(56, 56)``),
    by name. fx cannot trace such a module alone with a proxy for them (``reshape(B, C, *size)``
    iterates it), but can with their values. Empty where the model does not run."""
    found: dict[str, dict[str, Any]] = {}
    hooks = []

    def record(path: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if path in found:
            return
        try:
            signature = inspect.signature(module.forward)
            bound = signature.bind(*args, **kwargs)
        except (TypeError, ValueError):
            return
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        found[path] = {
            k: _plain(v)
            for k, v in bound.arguments.items()
            if signature.parameters[k].kind in named and _is_plain(v)
        }

    modules = dict(model.named_modules())
    for path in paths:
        if path in modules and path:
            hook = modules[path].register_forward_pre_hook(
                lambda m, a, k, path=path: record(path, m, a, k), with_kwargs=True
            )
            hooks.append(hook)
    try:
        # _patched: state the forward caches (LeViT's attention_bias_cache) is restored
        with torch.no_grad(), eval_mode(model), quiet_torch(), _patched(model, []):
            model(*inputs)
    except Exception:  # noqa: BLE001 - then no module gets arguments; probing does without
        return {}
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _is_plain(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    return v is None or type(v) in (int, float, bool, str)


def _plain(v: Any) -> Any:
    return tuple(_plain(x) for x in v) if isinstance(v, tuple) else v


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


def _item(value: Any, index: int | None) -> Any:
    return value if index is None else value[index]


def _with(old: Any, index: int | None, value: int) -> Any:
    if index is None:
        return value
    items = list(old)
    items[index] = value
    return type(old)(items)


def _traced_state(name: str) -> bool:
    """Whether a module attribute of that name is one a probe trace may have added: public
    state, or a tensor constant fx stored on the traced module (removed again, so that
    probing leaves the model as it was)."""
    return not name.startswith("_") or re.fullmatch(r"_tensor_constant\d+", name) is not None


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
        state.append((m, public, dicts, set(vars(m))))
    try:
        for module, attr, value in changes:
            setattr(model.get_submodule(module), attr, value)
        yield
    finally:
        for m, public, dicts, before in state:
            for k in [k for k in vars(m) if k not in before and _traced_state(k)]:
                delattr(m, k)
            for k, v in public.items():
                if k in dicts:
                    v.clear()
                    v.update(dicts[k])
                if vars(m).get(k) is not v:
                    setattr(m, k, v)
