"""Choosing each group's new width from the caller's ``factor`` (a float or a dict)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

import networkx as nx

from .._text import owner_module
from ..axes.fold import TermFold
from ..axes.sizes import new_size
from ..axes.terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip
from ..errors import (
    ConstraintError,
    FrozenGroupError,
    GroupNotFoundError,
    InvalidArgumentError,
    UnsupportedOpError,
    warn_growth,
)
from ..graph.width_graph import WidthGraph, WidthGroup, tied_factor
from ..rules.context import BLOCKED
from .described import plan_described

Factor = Union[float, int, Mapping[str, Union[int, float]]]  # noqa: UP007 - a runtime alias (py3.10)


def check_factor(value: object, what: str = "factor") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{what} must be a number > 1, got {value!r}")
    f = float(value)
    if math.isnan(f) or math.isinf(f) or f <= 1.0:
        raise InvalidArgumentError(
            f"{what} must be a finite number > 1 (autogrow only grows), got {value!r}"
        )
    return f


def _ratio_classes(graph: WidthGraph) -> list[set[int]]:
    """Sets of group ids that must be widened by one common integer factor."""
    store = graph.store
    links = nx.Graph()
    for a, b in store.ratio_ties.edges:
        la, lb = store.leaf_atoms(store.atom(a)), store.leaf_atoms(store.atom(b))
        for x in la:
            for y in lb:
                links.add_edge(x.id, y.id)
    return [set(c) for c in nx.connected_components(links)]


def plan_widths(graph: WidthGraph, factor: Factor) -> dict[int, int]:
    """New width per group id (only groups that change). Uniform groups that take filled
    units (``group.fill``) grow as asked: mean or zero units make up the rest."""
    if isinstance(factor, Mapping):
        wanted = _dict_targets(graph, factor)
    else:
        f = check_factor(factor)
        wanted = {}
        for g in graph.groups:
            if g.widenable:
                wanted[g.id] = (
                    g.width * math.floor(f + 1e-9)
                    if g.whole_multiples_only
                    else max(g.width, round(g.width * f))
                )
    sizes = _apply_ratio_ties(graph, wanted, explicit=isinstance(factor, Mapping))
    sizes = _apply_size_ties(graph, sizes)
    requested = set(wanted) if isinstance(factor, Mapping) else set()
    sizes = _repair(graph, sizes, requested)
    if graph.relations is not None:  # what the model's library can describe (its config)
        sizes = plan_described(
            graph, sizes, graph.relations, requested, _equalities(graph), _ratio_classes(graph)
        )
    changed = {gid: n for gid, n in sizes.items() if n != graph.by_id(gid).width}
    kept_by_config = graph.relations is not None and graph.relations.kept
    if not changed and graph.blocked and not kept_by_config and not isinstance(factor, Mapping):
        raise UnsupportedOpError(
            f"nothing to widen with factor {factor!r}: the groups that could grow pass through "
            f"ops autogrow has no rule for: {'; '.join(graph.blocked[:3])}. Register a rule "
            "(autogrow.register_rule / register_module_rule) or report the op."
        )
    if not changed:
        raise ConstraintError(_nothing_to_widen(graph, factor))
    return changed


def _apply_ratio_ties(
    graph: WidthGraph, wanted: dict[int, int], *, explicit: bool
) -> dict[int, int]:
    sizes = dict(wanted)
    for cls in _ratio_classes(graph):
        members = [graph.by_id(i) for i in cls if graph.by_id(i) is not None]
        if not members:
            continue
        ks = {g.id: sizes.get(g.id, g.width) / g.width for g in members}
        frozen = [g for g in members if not g.widenable]
        asked = {k for gid, k in ks.items() if gid in wanted}
        if explicit and len(asked) > 1:
            names = ", ".join(g.name for g in members)
            raise ConstraintError(
                f"groups {names} are normalised together (one LayerNorm/GroupNorm over their "
                "concatenation) and must be widened by the same integer factor"
            )
        k = (
            1
            if frozen
            else tied_factor(members, max(ks.values()) if explicit else min(ks.values()))
        )
        for g in members:
            sizes[g.id] = int(g.width * k)
    return sizes


def _apply_size_ties(graph: WidthGraph, sizes: dict[int, int]) -> dict[int, int]:
    """Interleaved parts (a channel shuffle) must keep equal sizes: tied groups take the
    largest requested width, or all keep theirs when one of them is frozen."""
    store = graph.store
    links = nx.Graph()
    pairs = []
    for a, b in store.size_ties:
        for x, y in _aligned(store, a, b):
            if isinstance(x, Atom) and isinstance(y, Atom):
                links.add_edge(x.id, y.id)
            else:
                pairs.append((x, y))
    out = dict(sizes)
    for cls in nx.connected_components(links):
        members = [graph.by_id(i) for i in cls]
        width = max(out.get(i, store.atom(i).size) for i in cls)
        if any(g is None or not g.widenable for g in members):
            width = store.atom(next(iter(cls))).size
        for i in cls:
            out[i] = width
    return out


def _equalities(graph: WidthGraph) -> list[tuple[Term, Term]]:
    """Pairs of axes that forward code needs to keep equal in size."""
    store = graph.store
    pairs = [p for a, b in store.size_ties for p in _aligned(store, a, b)]
    pairs += [
        (lit.term, lit.value) for lit in graph.analysis.literals if not isinstance(lit.value, int)
    ]
    return pairs


def _repair(graph: WidthGraph, sizes: dict[int, int], requested: set[int]) -> dict[int, int]:
    """Keep at their width the groups of every size equality the plan would break; refuse
    only when the caller asked for one of those groups by name."""
    store = graph.store
    out = dict(sizes)
    tied = nx.Graph()
    for a, b in store.ratio_ties.edges:
        for x in store.leaf_atoms(store.atom(a)):
            for y in store.leaf_atoms(store.atom(b)):
                tied.add_edge(x.id, y.id)
    for a, b in store.size_ties:
        for x, y in _aligned(store, a, b):
            if isinstance(x, Atom) and isinstance(y, Atom):
                tied.add_edge(x.id, y.id)
    pairs = _equalities(graph)
    while True:
        broken = [(a, b) for a, b in pairs if new_size(store, a, out) != new_size(store, b, out)]
        if not broken:
            return out
        involved = {x.id for a, b in broken for x in store.leaf_atoms(a) + store.leaf_atoms(b)}
        for i in list(involved):
            if tied.has_node(i):
                involved |= nx.node_connected_component(tied, i)
        asked = involved & requested
        if asked:
            names = ", ".join(sorted(g.name for i in asked if (g := graph.by_id(i))))
            raise ConstraintError(
                f"widening {names} would break a size that forward code keeps equal to another "
                "axis (a channel shuffle's interleaved parts, or a view sized from another "
                "tensor); request the groups involved together with the same factor"
            )
        for i in involved:
            out.pop(i, None)


def _aligned(store, a: Term, b: Term) -> list[tuple[Term, Term]]:
    """Split a same-size requirement into requirements on matching pieces, where the two
    layouts have the same structure."""
    a, b = store.resolve(a), store.resolve(b)
    if a == b:
        return []
    if type(a) is type(b):
        ka, kb = _AlignedPieces().fold(a), _AlignedPieces().fold(b)
        if ka is not None and kb is not None and len(ka) == len(kb):
            if all(x.size == y.size for x, y in zip(ka, kb)):
                return [pair for x, y in zip(ka, kb) for pair in _aligned(store, x, y)]
    return [(a, b)]


class _AlignedPieces(TermFold[tuple[Term, ...] | None]):
    """The pieces ``_aligned`` matches between two terms of one kind: None for an atom (the
    requirement stays on it), no pieces for what carries no group (two Fixed never conflict)."""

    def fixed(self, t: Fixed) -> tuple[Term, ...] | None:
        return ()

    def atom(self, t: Atom) -> tuple[Term, ...] | None:
        return None

    def cat(self, t: Cat) -> tuple[Term, ...] | None:
        return t.parts

    def zip(self, t: Zip) -> tuple[Term, ...] | None:
        return t.parts

    def prod(self, t: Prod) -> tuple[Term, ...] | None:
        return t.factors

    def stack(self, t: Stack) -> tuple[Term, ...] | None:  # rows not compared (as before)
        return ()

    def sel(self, t: Sel) -> tuple[Term, ...] | None:
        return ()


def _dict_targets(graph: WidthGraph, factor: Mapping[str, int | float]) -> dict[int, int]:
    if not factor:
        raise InvalidArgumentError("factor dict is empty: name at least one group or module")
    wanted: dict[int, int] = {}
    for key, value in factor.items():
        g = graph.group(key)
        if g is None:
            close = [n for n in (x.name for x in graph.groups) if key in n or n in key][:5]
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise GroupNotFoundError(
                f"{key!r} names no width group and no module with parameters in one.{hint} "
                "List the groups with print(autogrow.analyze(model))."
            )
        if g.frozen and BLOCKED in g.frozen:
            raise UnsupportedOpError(
                f"group {g.name!r} (requested as {key!r}) passes through {g.frozen}. Register a "
                "rule for that op (autogrow.register_rule / register_module_rule) or pick "
                "another group."
            )
        if not g.widenable:
            raise FrozenGroupError(
                f"group {g.name!r} (requested as {key!r}, modules {', '.join(g.modules[:3])}) is "
                f"frozen: {g.frozen}. It cannot change width; pick another group."
            )
        wanted[g.id] = _target_width(graph, g, key, value)
    return wanted


def _target_width(graph: WidthGraph, g: WidthGroup, key: str, value: int | float) -> int:
    # A module name (even one that also names the group) means that module's output width.
    scale = _module_multiplicity(graph, g, key)
    uniform = g.whole_multiples_only
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"width for {key!r} must be an int or a float, got {value!r}")
    if isinstance(value, float):
        f = check_factor(value, f"factor for {key!r}")
        return g.width * math.floor(f + 1e-9) if uniform else max(g.width, round(g.width * f))
    if value % scale:
        raise ConstraintError(
            f"{key!r} has {g.width * scale} outputs made of {scale} blocks of group {g.name!r}; "
            f"its width must be a multiple of {scale}, got {value}"
        )
    target = value // scale
    if target < g.width:
        raise ConstraintError(
            f"{key!r}: new width {value} is smaller than the current {g.width * scale}; "
            "autogrow only grows"
        )
    if uniform and target % g.width:
        why = graph.unfilled.get(g.id)
        raise ConstraintError(
            f"group {g.name!r} must be replicated uniformly ({g.uniform}); its width must be a "
            f"multiple of {g.width * scale}, got {value}"
            + (f" (no filled units: {why})" if why else "")
        )
    return target


def _module_multiplicity(graph: WidthGraph, g: WidthGroup, module: str) -> int:
    """How many units of the module's output axis each unit of ``g`` accounts for."""
    totals = [
        new_size(graph.store, graph.analysis.params[m.param].terms[m.dim], {})
        for m in g.members
        if m.role != "reduce"
        and (owner_module(m.param) == module or m.param.startswith(f"{module}."))
    ]
    # The smallest output axis: an attention module's embed width, not its 3× qkv rows.
    return min(totals) // g.width if totals else 1


# -- partial growth: which groups a float factor could not grow as asked, and why --------------


@dataclass(frozen=True)
class Shortfall:
    """A group that a float factor grew less than asked: ``kind`` is ``"uniform"``,
    ``"ratio"``, ``"size"``, ``"equality"``, ``"config"`` (the model's description, e.g. a
    transformers config, cannot state the width) or ``"blocked"``; ``why`` says it in
    words."""

    group: WidthGroup
    planned: int
    asked: int
    kind: str
    why: str


def shortfalls(graph: WidthGraph, factor: float, widths: Mapping[int, int]) -> list[Shortfall]:
    """The groups that ``widths`` (planned for the float ``factor``) grows less than
    ``round(width × factor)``, each with the step of planning that held it back, and the
    frozen groups an op without a rule keeps in modules that do grow."""
    f = float(factor)
    asked = {g.id: max(g.width, round(g.width * f)) for g in graph.groups if g.widenable}
    wanted = {
        g.id: g.width * math.floor(f + 1e-9) if g.whole_multiples_only else asked[g.id]
        for g in graph.groups
        if g.widenable
    }
    tied = _apply_ratio_ties(graph, wanted, explicit=False)
    sized = _apply_size_ties(graph, tied)
    held: dict[int, tuple[str, list[WidthGroup]]] | None = None  # only when needed: costly
    out, culprits = [], set()
    for g in graph.groups:
        if not g.widenable or asked[g.id] == g.width:
            continue
        got = widths.get(g.id, g.width)
        if got >= asked[g.id]:
            continue
        config_why = graph.relations.kept.get(g.id) if graph.relations is not None else None
        if config_why is not None and got < sized.get(g.id, g.width):
            kind, why = "config", config_why
        elif got < sized.get(g.id, g.width):
            held = _equality_reasons(graph, sized) if held is None else held
            kind, why = "equality", _equality_why(held.get(g.id))
            culprits.update(o.id for o in held.get(g.id, ("", []))[1] if not o.widenable)
        elif sized.get(g.id, g.width) < tied.get(g.id, g.width):
            kind, why = "size", "interleaved with a frozen group (a channel shuffle's parts)"
        elif tied.get(g.id, g.width) < wanted[g.id]:
            kind, why = "ratio", _ratio_why(graph, g)
        else:
            kind, why = "uniform", f"uniform ({g.uniform}): grows by whole multiples only"
            if g.id in graph.unfilled:  # why filled units could not make up the rest
                why += f"; no filled units: {graph.unfilled[g.id]}"
        out.append(Shortfall(g, got, asked[g.id], kind, why))
    for gid, why in graph.kept.items():  # frozen while planning: a literal size keeps them
        if (g := graph.by_id(gid)) is not None and round(g.width * f) > g.width:
            out.append(Shortfall(g, g.width, round(g.width * f), "literal", why))
    grown = {m for gid in widths if (w := graph.by_id(gid)) for m in w.modules}
    for g in graph.groups:
        if g.frozen and BLOCKED in g.frozen and (grown & set(g.modules) or g.id in culprits):
            out.append(Shortfall(g, g.width, g.width, "blocked", g.frozen))
    return out


def _equality_reasons(
    graph: WidthGraph, sizes: dict[int, int]
) -> dict[int, tuple[str, list[WidthGroup]]]:
    """For each group that ``_repair`` drops from ``sizes``: where forward code keeps its size
    equal to another axis, and the other groups of that equality (``_repair``'s loop)."""
    store = graph.store
    tied = nx.Graph()
    for a, b in store.ratio_ties.edges:
        for x in store.leaf_atoms(store.atom(a)):
            for y in store.leaf_atoms(store.atom(b)):
                tied.add_edge(x.id, y.id)
    pairs: list[tuple[Term, Term, object]] = []  # where: a text, or the call to locate
    for a, b in store.size_ties:
        for x, y in _aligned(store, a, b):
            if isinstance(x, Atom) and isinstance(y, Atom):
                tied.add_edge(x.id, y.id)
            pairs.append((x, y, "interleaved parts of a channel shuffle"))
    for lit in graph.analysis.literals:
        if not isinstance(lit.value, int):
            pairs.append((lit.term, lit.value, lit.call))
    out: dict[int, tuple[str, list[WidthGroup]]] = {}
    current = dict(sizes)
    while True:
        broken = [
            (a, b, where)
            for a, b, where in pairs
            if new_size(store, a, current) != new_size(store, b, current)
        ]
        before = len(current)
        for a, b, where in broken:
            ids = {x.id for x in store.leaf_atoms(a) + store.leaf_atoms(b)}
            for i in list(ids):
                if tied.has_node(i):
                    ids |= nx.node_connected_component(tied, i)
            groups = [g for i in sorted(ids) if (g := graph.by_id(i)) is not None]
            for i in ids & current.keys():
                if i not in out:
                    text = where if isinstance(where, str) else where.where(full=True)
                    out[i] = (text, [g for g in groups if g.id != i])
                current.pop(i)
        if len(current) == before:  # nothing left to drop (``_repair`` would not get here)
            return out


def _equality_why(held: tuple[str, list[WidthGroup]] | None) -> str:
    if held is None:  # not expected: _repair and _equality_reasons run the same loop
        return "forward code keeps its size equal to another axis that cannot grow alike"
    where, others = held
    frozen = [g.name for g in others if not g.widenable]
    stays = f": frozen {', '.join(frozen[:3])}" if frozen else ""
    return (
        f"forward code keeps its size equal to another axis that cannot grow alike{stays} ({where})"
    )


def _ratio_why(graph: WidthGraph, g: WidthGroup) -> str:
    tied = graph.ratio_tied(g)
    store, because = graph.store, ""
    for a, b, data in store.ratio_ties.edges(data=True):
        ids = {x.id for t in (a, b) for x in store.leaf_atoms(store.atom(t))}
        if g.id in ids:
            because = f" ({data.get('why')})"
            break
    frozen = [t.name for t in tied if not t.widenable]
    if frozen:
        return f"ratio-tied{because} to frozen group {', '.join(frozen[:3])}"
    names = ", ".join(t.name for t in tied[:3]) + (", ..." if len(tied) > 3 else "")
    whole = [t.name for t in [g, *tied] if t.whole_multiples_only]
    if whole:  # one of them cannot take filled units: the common factor is whole
        return (
            f"ratio-tied{because} to {names}: they grow by one whole factor ({whole[0]} is uniform)"
        )
    return f"ratio-tied{because} to {names}: they grow by one common factor"


def partial_growth_message(
    graph: WidthGraph, factor: float, widths: Mapping[int, int], *, limit: int = 12
) -> str | None:
    """The :class:`~autogrow.GrowthWarning` text for ``widths`` planned at the float
    ``factor``, or None when every widenable group grew as asked."""
    found = shortfalls(graph, factor, widths)
    if not found:
        return None
    f = float(factor)
    widenable = sum(1 for g in graph.groups if g.widenable)
    lines = [
        f"widen with factor {factor!r} grew {len(widths)} of {widenable} widenable groups; "
        "these kept their width or grew less:"
    ]
    kept = [s for s in found if s.kind != "blocked"]
    for s in kept[:limit]:
        grew = "kept" if s.planned == s.group.width else f"grown to {s.planned}"
        lines.append(
            f"  {s.group.name}: width {s.group.width} {grew} (x{f:g} asks {s.asked}): {s.why}"
        )
    if len(kept) > limit:
        lines.append(f"  ... and {len(kept) - limit} more groups")
    by_op: dict[str, list[WidthGroup]] = {}
    for s in found:
        if s.kind == "blocked":
            by_op.setdefault(s.why, []).append(s.group)
    for why, groups in by_op.items():
        names = ", ".join(f"{g.name} ({g.width})" for g in groups[:4])
        more = f" and {len(groups) - 4} more" if len(groups) > 4 else ""
        lines.append(f"  {names}{more} frozen: {why}")
    kinds = {s.kind for s in found}
    advice = []
    if kinds & {"uniform", "ratio", "config"} and not f.is_integer():
        advice.append(
            f"an integer factor ({math.ceil(f)}.0) also grows the uniform and ratio-tied groups"
        )
    if "blocked" in kinds:
        advice.append(
            "a rule for the op (autogrow.register_rule / register_module_rule) unfreezes its groups"
        )
    advice.append("a dict of widths picks groups one by one (print(autogrow.analyze(model)))")
    lines.append("Instead: " + "; ".join(advice) + ".")
    return "\n".join(lines)


def report_partial_growth(graph: WidthGraph, factor: Factor, widths: Mapping[int, int]) -> None:
    """Warn once (a :class:`~autogrow.GrowthWarning`) when a float ``factor`` grew some
    groups less than asked; a dict names its groups itself and is not reported."""
    if isinstance(factor, Mapping):
        return
    message = partial_growth_message(graph, check_factor(factor), widths)
    if message is not None:
        warn_growth(message)


def _nothing_to_widen(graph: WidthGraph, factor: Factor) -> str:
    """Why a factor changes no group, with advice that fits the factor that was passed."""
    if isinstance(factor, Mapping):
        floats = [v for v in factor.values() if isinstance(v, float)]
        whole = (
            ""
            if all(v.is_integer() for v in floats)
            else (
                " (a uniform group, under LayerNorm/GroupNorm, grows by whole multiples: a float "
                "factor is rounded down to one)"
            )
        )
        return (
            f"nothing to widen with factor {factor!r}: every requested group keeps its width "
            f"after rounding to its constraints{whole}; see autogrow.analyze(model)."
        )
    f = check_factor(factor)
    found = [s for s in shortfalls(graph, f, {}) if s.kind != "blocked"]
    if not found:
        return (
            f"nothing to widen with factor {factor!r}: no widenable group gains a unit at this "
            "factor. Use a larger factor or a dict of per-group widths; see "
            "autogrow.analyze(model)."
        )
    shown = "; ".join(f"{s.group.name} (width {s.group.width}): {s.why}" for s in found[:4])
    more = f"; and {len(found) - 4} more" if len(found) > 4 else ""
    kinds = {s.kind for s in found}
    if kinds & {"uniform", "ratio", "config"} and not f.is_integer():
        advice = f"Use an integer factor ({math.ceil(f)}.0) or a dict of per-group widths"
    elif kinds == {"config"}:
        advice = (
            "The model's config cannot state these widths while the fields named above stay; "
            "a rule that frees the frozen part, or another factor, may"
        )
    else:
        advice = "Widen the groups they are tied to as well (a dict of per-group widths)"
    return (
        f"nothing to widen with factor {factor!r}: every widenable group keeps its width: "
        f"{shown}{more}. {advice}; see autogrow.analyze(model)."
    )
