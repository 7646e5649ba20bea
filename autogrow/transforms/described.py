"""Planning under a model's description: the widths a factor asks for, brought to ones that the
model's variables (a library config, :class:`~autogrow.axes.relations.SizeRelations`) can state.

The planner's widths give each variable a value (:meth:`SizeRelations.solve`); the variables
give every related group its width back. Whatever that breaks (a frozen group that would move,
a uniform group grown by a fraction, a size equality, monomials that disagree, the adapter's
exact check) blames variables; one of them is held at its value and the plan is solved again,
until the variables and the widths describe each other. Groups that no relation covers keep
their width: nothing could state a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from ..axes.relations import Blame, SizeRelations
from ..axes.sizes import new_size
from ..axes.terms import Term
from ..errors import ConstraintError
from ..graph.width_graph import WidthGraph


def plan_described(
    graph: WidthGraph,
    planned: Mapping[int, int],
    relations: SizeRelations,
    requested: set[int],
    equalities: list[tuple[Term, Term]],
    ratio_classes: list[set[int]],
) -> dict[int, int]:
    """New width per group (all groups) that ``relations`` can describe, as close to
    ``planned`` as holding variables allows; ``equalities`` (pairs of axes forward code keeps
    equal) and ``ratio_classes`` (groups that grow by one common factor) as the planner found
    them. Records on ``relations`` what was held and why
    (``held``) and which groups it kept below the plan (``kept``). Raises ConstraintError
    when a group the caller named cannot grow as asked, naming the variable that blocks it."""
    wanted = {g.id: planned.get(g.id, g.width) for g in graph.groups}
    held: dict[str, str] = {}
    while True:
        values = relations.solve(wanted, held)
        described = relations.widths(values)
        widths = {g.id: described.get(g.id, g.width) for g in graph.groups}
        blame = _problem(graph, relations, values, widths, equalities, ratio_classes)
        if blame is None:
            break
        free = (blame.variables & relations.changed(values)) - held.keys()
        if not free:
            raise ConstraintError(
                f"no plan that {relations.what}s can describe: {blame.why}; widen with a "
                "dict of widths for the groups the fields size (see autogrow.analyze(model))"
            )
        name = min(free, key=lambda n: (len(relations.groups_of(n)), n))
        held[name] = blame.why
    relations.held = held
    relations.kept = {
        gid: _kept_why(graph, relations, gid, held, widths)
        for gid, n in widths.items()
        if n < wanted[gid]
    }
    short = [gid for gid in requested if widths[gid] < wanted[gid]]
    if short:
        gid = short[0]
        g = graph.by_id(gid)
        raise ConstraintError(
            f"group {g.name!r} cannot grow {g.width} -> {wanted[gid]}: "
            f"{relations.kept[gid]}. Grow every group that field sizes by one whole factor "
            "(a dict naming them all, or a float factor); autogrow.analyze(model) lists them"
        )
    return widths


def _kept_why(
    graph: WidthGraph,
    relations: SizeRelations,
    gid: int,
    held: Mapping[str, str],
    widths: Mapping[int, int],
) -> str:
    monomials = relations.widths_of.get(gid)
    if not monomials:
        return f"no {relations.what} states its width"
    m = monomials[0]
    names = [n for n in m.names if n in held] or list(m.names)
    what = ", ".join(f"{relations.what} {n} = {relations.values[n]}" for n in names)
    sized = f"its width is {m}"
    reason = held.get(names[0]) if names else None
    if reason is not None:
        return f"{sized}, and {what} is held: {reason}"
    pinned = [
        g
        for other in relations.groups_of(names[0])
        if other != gid and (g := graph.by_id(other)) is not None and widths[other] == g.width
    ]
    pinned.sort(key=lambda g: g.frozen is None)  # a frozen group says most
    if not pinned:
        return f"{sized}, and {what} cannot follow"
    g = pinned[0]
    because = f" (frozen: {g.frozen})" if g.frozen else ""
    return f"{sized}, and {what} also sizes group {g.name!r}, which keeps its width{because}"


def _problem(
    graph: WidthGraph,
    relations: SizeRelations,
    values: Mapping[str, float],
    widths: Mapping[int, int],
    equalities: list[tuple[Term, Term]],
    ratio_classes: list[set[int]],
) -> Blame | None:
    """The first thing that ``values`` / ``widths`` break, with the variables to blame."""
    store = graph.store

    def blame_groups(ids, why: str) -> Blame:
        names = {n for i in ids for m in relations.widths_of.get(i, []) for n in m.names}
        return Blame(frozenset(names), why)

    for gid, monomials in relations.disagreements(values):
        g = graph.by_id(gid)
        shown = ", ".join(f"{m} = {m(values):g}" for m in monomials)
        return blame_groups([gid], f"group {g.name if g else gid} would be {shown}")
    for g in graph.groups:
        n = widths[g.id]
        if n == g.width:
            continue
        if g.frozen or n < g.width or (g.whole_multiples_only and n % g.width):
            why = g.frozen or ("uniform: whole multiples only" if n >= g.width else "shrinks")
            return blame_groups([g.id], f"group {g.name} ({g.width} -> {n}) {why}")
    for a, b in equalities:
        if new_size(store, a, widths) != new_size(store, b, widths):
            ids = [x.id for x in store.leaf_atoms(a) + store.leaf_atoms(b)]
            return blame_groups(ids, "forward code keeps two sizes equal that would differ")
    for cls in ratio_classes:
        members = [g for i in cls if (g := graph.by_id(i)) is not None]
        ratios = {Fraction(widths[g.id], g.width) for g in members}
        whole = any(g.whole_multiples_only for g in members)
        if len(ratios) > 1 or (whole and any(r.denominator != 1 for r in ratios)):
            return blame_groups(cls, "ratio-tied groups grow by one common (whole) factor")
    if relations.check is not None:
        return relations.check(values, widths)
    return None
