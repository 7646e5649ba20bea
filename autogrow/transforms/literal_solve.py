"""Which attribute values make forward code's literal sizes follow their widened axes.

Probing (:class:`~autogrow.transforms.attributes.AttributeProber`) gives each literal that
widening would change its sources: ``literal = Σ slope · attribute + offset`` over the
attributes that move it (one, or several: ``self.dim - self.pdim``). The literals that share
attributes form one linear system; :func:`solve_literals` picks, per connected part, the
solution that changes the fewest attributes (the others keep their values), in positive
integers. A part with no such solution, or with two equally small ones (``heads * dim``: which
of them to change is not known), is unsolved: widen then keeps the groups of those literals at
their width (:class:`KeepableLiteral`) and grows the rest, which is exact, rather than refuse.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import networkx as nx
from torch import fx

from ..axes.terms import Term
from ..errors import HardcodedSizeError
from ..rules.registry import Dynamic
from .attributes import AttrSource

Key = tuple[str, str, int | None]  # (module, attribute, index inside a tuple attribute)
_MAX_UNKNOWNS = 8  # attributes per connected part; subsets of them are tried in order


@dataclass(frozen=True)
class Equation:
    """One literal: ``Σ slope · attribute + offset == target`` over its ``sources``."""

    sources: tuple[AttrSource, ...]
    literal: int
    target: int


class KeepableLiteral(HardcodedSizeError):
    """A literal whose attributes cannot follow the widening, while keeping ``groups`` (group
    id → why) at their width keeps it as it is. widen catches it, keeps those groups and plans
    again; raised to the caller when nothing else would grow or the caller named one of them.
    """

    def __init__(self, message: str, groups: dict[int, str]) -> None:
        super().__init__(message)
        self.groups = groups


def key(src: AttrSource) -> Key:
    return (src.module, src.attr, src.index)


def solve_literals(
    equations: list[Equation], fixed: dict[Key, int]
) -> tuple[dict[Key, int], dict[int, str]]:
    """New values of the attributes (only those that change) and the unsolved equations
    (index → why). ``fixed``: attributes whose new value is already decided (the rules bound
    them)."""
    links = nx.Graph()  # equations (by index) and the attributes they follow
    for i, eq in enumerate(equations):
        links.add_node(i)
        for s in eq.sources:
            if key(s) not in fixed:
                links.add_edge(i, key(s))
    values: dict[Key, int] = {}
    unsolved: dict[int, str] = {}
    for part in nx.connected_components(links):
        eqs = sorted(n for n in part if isinstance(n, int))
        # in the order the probes found them (the message names them so)
        unknowns = [k for i in eqs for k in map(key, equations[i].sources) if k in part]
        unknowns = list(dict.fromkeys(unknowns))
        found, why = _solve_part([equations[i] for i in eqs], unknowns, fixed)
        if found is None:
            unsolved.update(dict.fromkeys(eqs, why))
        else:
            values.update(found)
    return values, unsolved


def _solve_part(
    eqs: list[Equation], unknowns: list[Key], fixed: dict[Key, int]
) -> tuple[dict[Key, int] | None, str]:
    olds = {key(s): s.old for eq in eqs for s in eq.sources}
    names = {key(s): s.name for eq in eqs for s in eq.sources}
    shown = ", ".join(names[k] for k in unknowns)
    if len(unknowns) > _MAX_UNKNOWNS:
        return None, f"It follows too many attributes together ({shown})."
    for size in range(len(unknowns) + 1):
        solutions = []
        for chosen in itertools.combinations(unknowns, size):
            got = _solve_subset(eqs, list(chosen), fixed, olds)
            if got is not None:
                solutions.append(got)
        if len(solutions) == 1:
            return {k: v for k, v in solutions[0].items() if v != olds[k]}, ""
        if solutions:
            return None, (
                f"It follows several attributes ({shown}), so autogrow cannot tell which one "
                "to change."
            )
    if len(unknowns) == 1:
        (k,) = unknowns
        target = ", ".join(str(eq.target) for eq in eqs)
        return None, (
            f"It comes from attribute {names[k]} = {olds[k]}, and no integer value of it "
            f"gives {target}."
        )
    return None, (
        f"No positive integer values of the attributes it follows ({shown or 'none free'}) "
        "give every size these literals need."
    )


def _solve_subset(
    eqs: list[Equation], chosen: list[Key], fixed: dict[Key, int], olds: dict[Key, int]
) -> dict[Key, int] | None:
    """The one positive-integer solution with only ``chosen`` changed, or None."""
    import sympy  # exact rational elimination; torch depends on it, but it is slow to import

    rows, rhs = [], []
    for eq in eqs:
        offset = Fraction(eq.literal) - sum(s.slope * s.old for s in eq.sources)
        rest = Fraction(eq.target) - offset
        row = [sympy.Integer(0)] * len(chosen)
        for s in eq.sources:
            k = key(s)
            if k in chosen:
                row[chosen.index(k)] += sympy.Rational(s.slope.numerator, s.slope.denominator)
            else:
                rest -= s.slope * fixed.get(k, olds[k])
        rows.append(row)
        rhs.append(sympy.Rational(rest.numerator, rest.denominator))
    if not chosen:
        return {} if all(r == 0 for r in rhs) else None
    try:
        solution, params = sympy.Matrix(rows).gauss_jordan_solve(sympy.Matrix(rhs))
    except ValueError:  # inconsistent
        return None
    if params.shape[0]:
        return None  # not determined by these literals alone
    out = {}
    for k, v in zip(chosen, solution):
        if not v.is_integer or v <= 0:
            return None
        out[k] = int(v)
    return out


_ARITHMETIC = {
    operator.floordiv: operator.floordiv,
    operator.mul: operator.mul,
    operator.add: operator.add,
    operator.sub: operator.sub,
}


def computed_size(
    node: object,
    values: dict,
    size: Callable[[Term], int],
    read: list[Term],
    leaves: Callable[[str], tuple | None] | None = None,
    seen: set[str] | None = None,
) -> int | None:
    """The value a size computed at run time (``C // self.num_heads``, ``C`` read from a
    tensor's shape) takes after widening: sizes read from axes take their new sizes
    (appended to ``read``); the numbers written in the code are those of the trace, or, with
    ``leaves`` (node name → its sizes in a trace with updated attributes), those of that
    trace. ``seen`` collects the arithmetic nodes evaluated. None when it is no such
    computation."""
    if not isinstance(node, fx.Node):
        return node if type(node) is int else None
    value = values.get(node)
    if isinstance(value, Dynamic) and value.term is not None:
        read.append(value.term)
        return size(value.term)
    if node.op != "call_function" or node.target not in _ARITHMETIC or node.kwargs:
        return None
    if len(node.args) != 2:
        return None
    now = leaves(node.name) if leaves is not None else None
    args = [
        computed_size(a, values, size, read, leaves, seen)
        if isinstance(a, fx.Node) or now is None or i == 0
        else (now[0] if type(now[0]) is int else None)
        for i, a in enumerate(node.args)
    ]
    if None in args or (node.target is operator.floordiv and not args[1]):
        return None
    if seen is not None:
        seen.add(node.name)
    return _ARITHMETIC[node.target](*args)
