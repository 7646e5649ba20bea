"""Axis terms: how the units along one tensor axis are composed of width-group spaces.

Every axis of every traced tensor and parameter is described by a *term*:

- ``Atom``: a space of units that may be widened (a width group is a set of tied atoms);
- ``Fixed(n)``: n positions that never change (batch, spatial, an RGB input);
- ``Cat(parts)``: the parts side by side (``torch.cat``; a DenseNet feature map);
- ``Prod(factors)``: row-major product, outermost first (``flatten``, heads × head_dim,
  ``(c g)`` after a channel shuffle).

:class:`~autogrow.axes.store.AxisStore` (in :mod:`autogrow.axes.store`) unifies terms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .fold import TermFold

__all__ = [
    "Atom",
    "Cat",
    "Fixed",
    "Prod",
    "Sel",
    "Stack",
    "Term",
    "Zip",
    "cat",
    "prod",
    "zip_",
]


R = TypeVar("R")


class Term:
    """Base class of axis terms; ``size`` is the number of positions along the axis."""

    size: int

    def atoms(self) -> Iterator[Atom]:
        """The atoms this term mentions, left to right (unresolved)."""
        return iter(())

    def accept(self, fold: TermFold[R]) -> R:
        """``fold``'s method for this term's kind (each kind overrides this)."""
        raise TypeError(f"{type(self).__name__} is not a term kind that TermFold knows")


@dataclass(frozen=True)
class Fixed(Term):
    size: int

    def accept(self, fold: TermFold[R]) -> R:
        return fold.fixed(self)

    def __repr__(self) -> str:
        return str(self.size)


@dataclass(frozen=True)
class Atom(Term):
    id: int
    size: int = field(compare=False)

    def atoms(self) -> Iterator[Atom]:
        yield self

    def accept(self, fold: TermFold[R]) -> R:
        return fold.atom(self)

    def __repr__(self) -> str:
        return f"a{self.id}"


@dataclass(frozen=True)
class Cat(Term):
    parts: tuple[Term, ...]

    @property
    def size(self) -> int:  # type: ignore[override]
        return sum(p.size for p in self.parts)

    def atoms(self) -> Iterator[Atom]:
        for p in self.parts:
            yield from p.atoms()

    def accept(self, fold: TermFold[R]) -> R:
        return fold.cat(self)

    def __repr__(self) -> str:
        return "[" + " | ".join(map(repr, self.parts)) + "]"


@dataclass(frozen=True)
class Prod(Term):
    factors: tuple[Term, ...]

    @property
    def size(self) -> int:  # type: ignore[override]
        return math.prod(f.size for f in self.factors)

    def atoms(self) -> Iterator[Atom]:
        for f in self.factors:
            yield from f.atoms()

    def accept(self, fold: TermFold[R]) -> R:
        return fold.prod(self)

    def __repr__(self) -> str:
        return "(" + " ".join(map(repr, self.factors)) + ")"


@dataclass(frozen=True)
class Zip(Term):
    """Equal-size parts interleaved unit by unit: position ``i*k + j`` is unit ``i`` of part
    ``j`` (a channel shuffle turns ``[x | y]`` into ``zip(x, y)``). Each part keeps its group."""

    parts: tuple[Term, ...]

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.parts) * self.parts[0].size

    def atoms(self) -> Iterator[Atom]:
        for p in self.parts:
            yield from p.atoms()

    def accept(self, fold: TermFold[R]) -> R:
        return fold.zip(self)

    def __repr__(self) -> str:
        return "zip(" + ", ".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True)
class Stack(Term):
    """The within-part axis of a concatenation viewed as (parts, part size): which part it
    holds depends on the paired :class:`Sel` axis. Moving it is free; any other use ties the
    parts together (the conservative reading)."""

    rows: tuple[Term, ...]

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.rows[0].size

    def atoms(self) -> Iterator[Atom]:
        for r in self.rows:
            yield from r.atoms()

    def accept(self, fold: TermFold[R]) -> R:
        return fold.stack(self)

    def __repr__(self) -> str:
        return "stack(" + ", ".join(map(repr, self.rows)) + ")"


@dataclass(frozen=True)
class Sel(Term):
    """The which-part axis paired with a :class:`Stack`; elsewhere it acts as ``Fixed(k)``."""

    rows: tuple[Term, ...]

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.rows)

    def accept(self, fold: TermFold[R]) -> R:
        return fold.sel(self)

    def __repr__(self) -> str:
        return f"sel{len(self.rows)}"


def zip_(parts: Iterable[Term]) -> Term:
    parts = tuple(parts)
    if all(p == parts[0] for p in parts):  # one group repeated: an ordinary product
        return prod([parts[0], Fixed(len(parts))])
    return Zip(parts)


def cat(parts: Iterable[Term]) -> Term:
    """A normalised concatenation: nested Cats flattened, neighbouring Fixed merged."""
    flat: list[Term] = []
    for p in parts:
        for q in p.parts if isinstance(p, Cat) else (p,):
            if q.size == 0:
                continue
            if flat and isinstance(q, Fixed) and isinstance(flat[-1], Fixed):
                flat[-1] = Fixed(flat[-1].size + q.size)
            else:
                flat.append(q)
    if not flat:
        return Fixed(0)
    return flat[0] if len(flat) == 1 else Cat(tuple(flat))


def prod(factors: Iterable[Term]) -> Term:
    """A normalised product: nested Prods flattened, size-1 Fixed dropped, Fixed runs merged."""
    flat: list[Term] = []
    for f in factors:
        for q in f.factors if isinstance(f, Prod) else (f,):
            if isinstance(q, Fixed) and q.size == 1:
                continue
            if flat and isinstance(q, Fixed) and isinstance(flat[-1], Fixed):
                flat[-1] = Fixed(flat[-1].size * q.size)
            elif (
                flat
                and isinstance(q, Sel)
                and isinstance(flat[-1], Stack)
                and flat[-1].rows == q.rows
            ):
                flat[-1] = zip_(q.rows)  # (stack sel): the parts interleaved
            elif (
                flat
                and isinstance(q, Stack)
                and isinstance(flat[-1], Sel)
                and flat[-1].rows == q.rows
            ):
                flat[-1] = cat(q.rows)  # (sel stack): the concatenation again
            else:
                flat.append(q)
    if not flat:
        return Fixed(1)
    return flat[0] if len(flat) == 1 else Prod(tuple(flat))
