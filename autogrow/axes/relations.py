"""Integer relations between width groups and the numbers that describe a model (a library's
config fields): :class:`SizeRelations`, supplied by an adapter and planned under by widen.

A relation says that a group's width is a monomial of named variables, ``coefficient ×
Π variable^exponent`` (``hidden``, ``4 × hidden``, ``expand × hidden``, ``hidden / heads``).
Given the widths a plan would like, :meth:`SizeRelations.solve` chooses variable values (never
more growth than asked) and :meth:`SizeRelations.widths` gives the widths those values describe:
the plan becomes one the variables can state. What no monomial captures (fused sums, a config
class's own validation) is judged by the adapter's ``check``, which names the variables to blame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Value = int | float


@dataclass(frozen=True)
class Monomial:
    """``coefficient × Π values[name] ** exponent``.

    >>> m = Monomial(4.0, (("hidden", 1),))
    >>> m({"hidden": 32}), str(m)
    (128.0, '4 × hidden')
    >>> str(Monomial(0.125, (("hidden", 1), ("heads", -1))))
    'hidden / heads / 8'
    """

    coefficient: float
    exponents: tuple[tuple[str, int], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.exponents)

    def __call__(self, values: Mapping[str, Value]) -> float:
        out = self.coefficient
        for name, e in self.exponents:
            out *= float(values[name]) ** e
        return out

    def __str__(self) -> str:
        ups = [n if e == 1 else f"{n}^{e}" for n, e in self.exponents if e > 0]
        downs = [n if e == -1 else f"{n}^{-e}" for n, e in self.exponents if e < 0]
        c = self.coefficient
        if c >= 1 or not ups:
            ups = ([_number(c)] if c != 1 or not ups else []) + ups
        else:
            downs.append(_number(1 / c))
        return " / ".join([" × ".join(ups) or "1", *downs])


def _number(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else f"{x:g}"


@dataclass(frozen=True)
class Blame:
    """Why a set of variable values is not describable, and which variables could be held at
    their current values to fix it."""

    variables: frozenset[str]
    why: str


Check = Callable[[Mapping[str, Value], Mapping[int, int]], "Blame | None"]
"""``check(values, widths)``: the library's exact judgement of variable ``values`` for group
``widths`` (every group's new width); None when they describe each other."""


@dataclass
class SizeRelations:
    """What a model's description can express: its variables and each group's width as
    monomials of them (several monomials of one group must agree).

    Attributes:
        values: every variable's current value.
        integer: the variables that must stay integers (the rest are real ratios).
        widths_of: group id → the monomials its width equals.
        check: the adapter's exact judgement (see :data:`Check`), or None.
        what: how messages name a variable (e.g. "config field").

    >>> r = SizeRelations({"hidden": 32, "ffn": 64}, {"hidden", "ffn"},
    ...                   {1: [Monomial(1.0, (("hidden", 1),))], 2: [Monomial(1.0, (("ffn", 1),))]})
    >>> values = r.solve({1: 32, 2: 96}, held={})
    >>> values, r.widths(values)
    ({'hidden': 32, 'ffn': 96}, {1: 32, 2: 96})
    """

    values: dict[str, Value]
    integer: set[str]
    widths_of: dict[int, list[Monomial]]
    check: Check | None = None
    what: str = "variable"
    held: dict[str, str] = field(default_factory=dict)  # set by the planner: variable → why
    kept: dict[int, str] = field(default_factory=dict)  # set by the planner: group id → why

    def groups_of(self, name: str) -> list[int]:
        """The groups whose width ``name`` takes part in."""
        return [g for g, ms in self.widths_of.items() if any(name in m.names for m in ms)]

    def solve(self, wanted: Mapping[int, int], held: Mapping[str, str]) -> dict[str, Value]:
        """Variable values for the widths ``wanted`` (group id → width; groups left out give
        no candidates). A variable is found from a monomial in which it is the only unknown;
        several candidates take the smallest (never more growth than asked); ``held``
        variables and those no monomial determines keep their values."""
        known: dict[str, Value] = {k: v for k, v in self.values.items() if k in held}
        for _ in range(len(self.values) + 1):
            candidates: dict[str, list[float]] = {}
            for gid, monomials in self.widths_of.items():
                if gid not in wanted:
                    continue
                for m in monomials:
                    unknown = [(n, e) for n, e in m.exponents if n not in known]
                    if len(unknown) != 1:
                        continue
                    name, e = unknown[0]
                    rest = Monomial(m.coefficient, tuple(x for x in m.exponents if x[0] != name))
                    base = rest(known)
                    if base > 0:
                        candidates.setdefault(name, []).append((wanted[gid] / base) ** (1 / e))
            if not candidates:
                break
            for name, xs in candidates.items():
                x = min(xs)
                if name in self.integer:
                    x = max(1, math.floor(x + 1e-6))
                known[name] = x
        return {k: known.get(k, v) for k, v in self.values.items()}

    def widths(self, values: Mapping[str, Value]) -> dict[int, int]:
        """Each related group's width under ``values`` (the smallest of its monomials, rounded
        down; :meth:`disagreements` tells whether they agree)."""
        return {
            gid: math.floor(min(m(values) for m in ms) + 1e-6) for gid, ms in self.widths_of.items()
        }

    def disagreements(self, values: Mapping[str, Value]) -> list[tuple[int, list[Monomial]]]:
        """Groups whose monomials give different or fractional widths under ``values``."""
        out = []
        for gid, ms in self.widths_of.items():
            sizes = [m(values) for m in ms]
            if max(sizes) - min(sizes) > 1e-6 or abs(sizes[0] - round(sizes[0])) > 1e-6:
                out.append((gid, ms))
        return out

    def changed(self, values: Mapping[str, Value]) -> set[str]:
        return {k for k, v in values.items() if abs(float(v) - float(self.values[k])) > 1e-9}
