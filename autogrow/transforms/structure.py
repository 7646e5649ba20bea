"""The grown model's forward must take the path the original's took: re-trace and compare.

Growth preserves the function only if the grown model's forward runs the same ops in the same
order as the original's. Code that branches on a size (``if x.size(1) != self.filters:``),
unpacks a container (``a, b = self.blocks``), pairs its blocks (``zip(blocks[::2], ...)``),
reads an attribute of a container's last module (``self.block[-1].num_features``) or pushes
one skip tensor per block may take another path once widths or containers change. With
``verify=False`` no output comparison would notice, so the grown model is traced again,
symbolically (fx) or with fake values (torch.export, the tracer that captured the original),
and its graph is compared with the original's node by node:

* after :func:`~autogrow.widen`, the same ops on the same arguments; integers (sizes) may
  differ, but only as the plan says (each literal size the rules recorded, and with
  torch.export each op's output shape: :class:`~autogrow.transforms.planned_sizes.PlannedSizes`),
  every other constant must not (strings excepted: an assertion's message names traced
  values by node name);
* after :func:`~autogrow.deepen`, the graph with the inserted modules' nodes taken out (their
  output replaced by their input, since they compute the identity) is the original's, modules
  named by what they were before the insertion, every constant the same; and every inserted
  module runs.

A difference is a :class:`~autogrow.errors.StructureError` naming the first op that differs and
the model's line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from ..errors import StructureError, VerificationError
from ..tracing import eval_mode
from ..tracing.trace import TracerKind, _Tracer, parse_stack_trace, quiet_torch
from ..verify import locate_failure

Rename = Callable[[fx.Node], Any]
Sizes = Callable[[fx.Node, fx.Node], "str | None"]


def trace_like(
    model: nn.Module, kind: TracerKind, inputs: tuple, leaf_types: tuple[type, ...] = ()
) -> fx.Graph:
    """``model``'s graph by the tracer ``kind`` (no arithmetic: fx is symbolic, torch.export
    runs on fake values). Raises what the tracer raises."""
    with quiet_torch():
        if kind == TracerKind.FX:
            return _Tracer(leaf_types).trace(model)
        with eval_mode(model):
            return torch.export.export(model, tuple(inputs), strict=False).graph_module.graph


def retrace(
    model: nn.Module,
    kind: TracerKind,
    inputs: tuple,
    leaf_types: tuple[type, ...],
    what: str,
) -> fx.Graph:
    """:func:`trace_like` for a grown model; a failure is a StructureError naming the module
    and the model's line where it raised."""
    try:
        return trace_like(model, kind, inputs, leaf_types)
    except Exception as error:  # noqa: BLE001 - any failure means the grown model is unusable
        failure = locate_failure(model, error)
        where = f" in module {failure.module!r} ({failure.module_type})" if failure.module else ""
        line = f" The model's line: {failure.source}." if failure.source else ""
        first = str(error).splitlines()[0] if str(error) else ""
        raise StructureError(
            f"the {what} model no longer traces: {type(error).__name__}: {first}{where}.{line} "
            "Its forward code depends on something the growth changed (the number of blocks in "
            "a container, an attribute of a module that moved, a size). Nothing was returned; "
            "grow another place, or leave the groups involved out."
        ) from error


def compare_graphs(
    old: fx.Graph,
    new: fx.Graph,
    what: str,
    *,
    sizes_may_change: bool,
    rename: Rename | None = None,
    skip: Callable[[fx.Node], bool] | None = None,
    through: Callable[[fx.Node], fx.Node] | None = None,
    source: Callable[[fx.Node], str | None] | None = None,
    confirm: Callable[[], object] | None = None,
    sizes: Sizes | None = None,
) -> None:
    """Raise StructureError unless ``new`` runs ``old``'s ops, in order, on the same arguments.

    ``rename``: a node's target as the original would name it (deepen: modules before the
    insertion); ``skip``: nodes of ``new`` that are not compared (inserted modules);
    ``through``: for a skipped node another node uses, the node whose value it passes on;
    ``source``: the model's line of a node of ``new`` (for the message); ``confirm``: run
    on a difference, raises VerificationError when the outputs differ too (then the
    StructureError is raised from it); when it returns, the difference is one of naming, not
    of computation, and is accepted; ``sizes(old_node, new_node)``: what is wrong with the
    sizes a matched op is given or returns, or None (widen: the plan's sizes).
    """
    problem = first_difference(
        old, new, what, sizes_may_change, rename, skip, through, source, sizes
    )
    if problem is None:
        return
    if confirm is None:
        raise StructureError(problem)
    try:
        confirm()
    except VerificationError as error:
        raise StructureError(problem) from error


def first_difference(
    old: fx.Graph,
    new: fx.Graph,
    what: str,
    sizes_may_change: bool,
    rename: Rename | None = None,
    skip: Callable[[fx.Node], bool] | None = None,
    through: Callable[[fx.Node], fx.Node] | None = None,
    source: Callable[[fx.Node], str | None] | None = None,
    sizes: Sizes | None = None,
) -> str | None:
    """The message for the first op of ``new`` that differs from ``old``'s, or None (the
    arguments as for :func:`compare_graphs`)."""
    rename = rename or (lambda n: n.target)
    skip = skip or (lambda n: False)
    through = through or (lambda n: n)
    kept = [n for n in new.nodes if not skip(n)]
    olds = list(old.nodes)
    match: dict[fx.Node, fx.Node] = {}  # new node -> old node

    def new_key(v: Any) -> Any:
        return _key(v, lambda n: match.get(through(n)), sizes_may_change)

    def old_key(v: Any) -> Any:
        return _key(v, lambda n: n, sizes_may_change)

    for a, b in zip(olds, kept):
        if a.op != b.op or _target(a.target) != _target(rename(b)):
            return _differs(what, a, b, source)
        match[b] = a
        if new_key(b.args) != old_key(a.args) or new_key(b.kwargs) != old_key(a.kwargs):
            return _differs(what, a, b, source, arguments=True)
        if sizes is not None and (wrong := sizes(a, b)) is not None:
            return (
                f"the {what} model's {wrong}: a size attribute its forward code reads was not "
                "updated as planned (two attributes holding the same value, one of them "
                "mistaken for the other, or one computed in a way autogrow cannot follow), so "
                "the grown model would compute another function. Nothing was returned; leave "
                "the groups involved out (widen(model, {group: factor, ...})), or widen by "
                "another factor."
            )
    if len(olds) != len(kept):
        extra = kept[len(olds)] if len(kept) > len(olds) else None
        gone = olds[len(kept)] if len(olds) > len(kept) else None
        return _differs(what, gone, extra, source)
    return None


def _target(target: Any) -> Any:
    """A node's target, the constants fx numbers as it meets them (``_tensor_constant3``)
    under one name: their numbers shift when modules go in before them."""
    if isinstance(target, str) and re.fullmatch(r"_tensor_constant\d+", target):
        return "_tensor_constant"
    return target


def _key(v: Any, node: Callable[[fx.Node], Any], sizes_may_change: bool) -> Any:
    """What an argument is, for comparing: nodes by ``node`` (the matching original node),
    containers by their items, integers only when sizes may not change."""
    if isinstance(v, fx.Node):
        return ("node", node(v))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_key(x, node, sizes_may_change) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple((k, _key(x, node, sizes_may_change)) for k, x in v.items()))
    if isinstance(v, slice):
        return ("slice", *(_key(x, node, sizes_may_change) for x in (v.start, v.stop, v.step)))
    if sizes_may_change and type(v) is int:
        return ("int",)
    if isinstance(v, str):
        # an assertion's message is formatted from traced values (f"got {x.ndim}D"), which
        # fx writes as node names, and those shift when modules go in
        return ("str",)
    return ("value", type(v).__name__, repr(v))


def _describe(node: fx.Node | None) -> str:
    if node is None:
        return "nothing"
    if node.op in ("call_function", "call_method", "call_module", "get_attr"):
        target = getattr(node.target, "__name__", None) or str(node.target)
        return f"{node.op} {target}"
    return node.op


def _differs(
    what: str,
    old: fx.Node | None,
    new: fx.Node | None,
    source: Callable[[fx.Node], str | None] | None,
    arguments: bool = False,
) -> str:
    line = None
    if new is not None:
        line = source(new) if source is not None else None
        if line is None and new.meta.get("stack_trace"):
            line = parse_stack_trace(new.meta["stack_trace"])
    at = f" (the model's line: {line})" if line else ""
    if arguments:
        differs = f"it runs {_describe(new)} on other inputs or constants than the original"
    else:
        differs = f"where the original runs {_describe(old)}, it runs {_describe(new)}"
    return (
        f"the {what} model's forward takes another path than the original's: {differs}{at}. "
        "Its forward code "
        "branches on a size or on a container's length (if x.size(1) != self.filters, "
        "a, b = self.blocks, one skip tensor per block), so the grown model would compute "
        "another function. Nothing was returned; grow another place, or leave the groups "
        "involved out."
    )


def fx_source(model: nn.Module, leaf_types: tuple[type, ...]) -> Callable[[fx.Node], str | None]:
    """The model's line of a node of ``model``'s fx graph, by a second trace that records
    stack traces (several times slower, so only for a message; node names are
    deterministic)."""
    lines: dict[str, str | None] = {}
    try:
        with quiet_torch():
            graph = _Tracer(leaf_types, record_stack_traces=True).trace(model)
        for n in graph.nodes:
            text = n.meta.get("stack_trace")
            lines[n.name] = parse_stack_trace(text) if text else None
    except Exception:  # noqa: BLE001 - a message without a line is still a message
        pass
    return lambda node: lines.get(node.name)


def fx_graph_or_none(model: nn.Module, leaf_types: tuple[type, ...]) -> fx.Graph | None:
    """``model``'s fx graph, or None where fx cannot trace it."""
    try:
        return trace_like(model, TracerKind.FX, (), leaf_types)
    except Exception:  # noqa: BLE001 - then the caller compares outputs instead
        return None


def check_deepened(
    model: nn.Module,
    old: fx.Graph,
    result: nn.Module,
    copies: dict[int, Any],
    inputs: tuple,
    leaf_types: tuple[type, ...],
    what: str,
    confirm: Callable[[], object] | None = None,
) -> None:
    """Compare ``old``, the fx graph of ``model`` before deepening, with the deepened
    ``result``'s (``copies``: id of a module of ``model`` → its copy in ``result``, empty when
    grown in place); raise StructureError on a difference (``confirm`` as for
    :func:`compare_graphs`) or when an inserted module never runs."""
    new = retrace(result, TracerKind.FX, inputs, leaf_types, what)
    old_name = {id(copies.get(id(m), m)): name for name, m in model.named_modules()}
    inserted = {
        id(m)
        for m in result.modules()
        if id(m) not in old_name
        # the ``nn.Sequential(module, *new)`` that wraps a module is no inserted layer
        and not any(id(c) in old_name for c in m.children())
    }
    modules = dict(result.named_modules())

    def owners(node: fx.Node) -> list[nn.Module]:
        paths = [str(p) for p, _ in (node.meta.get("nn_module_stack") or {}).values()]
        if node.op == "call_module":
            paths.append(str(node.target))
        elif node.op == "get_attr":
            paths.append(str(node.target).rpartition(".")[0])
        return [modules[p] for p in paths if p in modules]

    skipped = {n for n in new.nodes if any(id(m) in inserted for m in owners(n))}
    for n in reversed(list(new.nodes)):  # constants only inserted modules use (fx's own)
        if n.op == "get_attr" and n.users and all(u in skipped for u in n.users):
            skipped.add(n)

    def skip(node: fx.Node) -> bool:
        return node in skipped

    def rename(node: fx.Node) -> Any:
        if node.op == "call_module":
            return old_name.get(id(modules.get(str(node.target))), node.target)
        if node.op == "get_attr":
            owner, _, attr = str(node.target).rpartition(".")
            path = old_name.get(id(modules.get(owner)), owner)
            return f"{path}.{attr}" if path else attr
        return node.target

    def through(node: fx.Node) -> fx.Node:
        # an inserted module computes the identity: its output is the value that entered it
        seen = set()
        while skip(node) and node not in seen:
            seen.add(node)
            inputs_ = [a for a in node.all_input_nodes if a.op != "get_attr"]
            if not inputs_:
                break
            node = inputs_[0]
        return node

    ran = {id(m) for n in new.nodes for m in owners(n) if id(m) in inserted}
    parents = {id(c): m for m in result.modules() for c in m.children()}
    roots = [
        m for m in result.modules() if id(m) in inserted and id(parents.get(id(m))) not in inserted
    ]
    idle = [m for m in roots if id(m) not in ran]
    # A module inside one the graph calls whole (a leaf, e.g. a torch.nn container fx does
    # not enter) is hidden from the graph, not dead: the outputs decide for those.
    called = {id(modules[str(n.target)]) for n in new.nodes if n.op == "call_module"}
    hidden = [m for m in idle if _inside(m, called, parents)]
    if hidden and confirm is not None:
        ran_hidden: set[int] = set()
        hooks = [m.register_forward_hook(lambda mod, *_: ran_hidden.add(id(mod))) for m in hidden]
        try:
            confirm()
        finally:
            for h in hooks:
                h.remove()
        idle = [m for m in idle if id(m) not in ran_hidden]
    if idle:
        names = {id(m): n for n, m in modules.items()}
        raise StructureError(
            f"the {what} model's forward never runs the inserted module(s) "
            f"{', '.join(repr(names[id(m)]) for m in idle[:4])}: its forward does not "
            "iterate over the whole container (it indexes or pairs its blocks), so the new "
            "depth would be dead. Nothing was returned; grow another place."
        )
    compare_graphs(
        old,
        new,
        what,
        sizes_may_change=False,
        rename=rename,
        skip=skip,
        through=through,
        source=lazy_source(lambda: fx_source(result, leaf_types)),
        confirm=confirm,
    )


def _inside(m: nn.Module, called: set[int], parents: dict[int, nn.Module]) -> bool:
    """Whether an ancestor of ``m`` is called whole by the graph."""
    parent = parents.get(id(m))
    while parent is not None:
        if id(parent) in called:
            return True
        parent = parents.get(id(parent))
    return False


def lazy_source(
    make: Callable[[], Callable[[fx.Node], str | None]],
) -> Callable[[fx.Node], str | None]:
    """``make()``'s function, built on the first call (a re-trace only for a message)."""
    built: list[Callable[[fx.Node], str | None]] = []

    def call(node: fx.Node) -> str | None:
        if not built:
            built.append(make())
        return built[0](node)

    return call
