"""Axis sizes after widening: a fold over resolved terms."""

from __future__ import annotations

from .fold import ResolvedFold
from .store import AxisStore
from .terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip

__all__ = ["NewSize", "new_size"]


class NewSize(ResolvedFold[int]):
    """The size of an axis once the groups in ``sizes`` (root atom id -> width) take their new
    widths; every other group keeps its width.

    >>> from autogrow.axes import AxisStore, Fixed, NewSize, prod
    >>> s = AxisStore()
    >>> heads = s.new_atom(2, "heads")
    >>> NewSize(s, {heads.id: 3}).fold(prod([heads, Fixed(64)]))
    192
    """

    def __init__(self, store: AxisStore, sizes: dict[int, int]) -> None:
        super().__init__(store)
        self.sizes = sizes

    def fixed(self, t: Fixed) -> int:
        return t.size

    def sel(self, t: Sel) -> int:  # the which-part axis: the number of parts never changes
        return t.size

    def atom(self, t: Atom) -> int:
        return self.sizes.get(t.id, t.size)

    def cat(self, t: Cat) -> int:
        return sum(self.fold(p) for p in t.parts)

    def prod(self, t: Prod) -> int:
        out = 1
        for f in t.factors:
            out *= self.fold(f)
        return out

    def zip(self, t: Zip) -> int:
        return len(t.parts) * self.fold(t.parts[0])

    def stack(self, t: Stack) -> int:
        return self.fold(t.rows[0])


def new_size(store: AxisStore, term: Term, sizes: dict[int, int]) -> int:
    """The size of an axis after its groups take their new widths (see :class:`NewSize`).

    >>> from autogrow.axes import AxisStore, Fixed, cat, new_size
    >>> s = AxisStore()
    >>> a = s.new_atom(4, "a")
    >>> new_size(s, cat([a, Fixed(3)]), {a.id: 6})
    9
    """
    return NewSize(store, sizes).fold(term)
