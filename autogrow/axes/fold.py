"""One fold over axis terms: a visitor with one method per term kind.

Every computation that takes a term apart by kind (its size after widening, its unit map, its
resolution in an :class:`~autogrow.axes.terms.AxisStore`, ...) is a :class:`TermFold` subclass.
Each term class dispatches to its own method (``Term.accept``), so adding a term kind means
adding one method here; a fold that does not handle a kind fails loudly instead of falling
through an ``isinstance`` ladder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .store import AxisStore
    from .terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip

__all__ = ["ResolvedFold", "TermFold"]

R = TypeVar("R")


class TermFold(Generic[R]):
    """A computation over terms, one method per term kind; ``fold(term)`` dispatches on the kind.

    A method left undefined raises :class:`NotImplementedError` naming the fold and the kind.

    >>> from autogrow.axes import Atom, Fixed, TermFold, cat
    >>> class Positions(TermFold[int]):
    ...     def fixed(self, t):
    ...         return t.size
    ...
    ...     def cat(self, t):
    ...         return sum(self.fold(p) for p in t.parts)
    >>> Positions().fold(cat([Fixed(2), Fixed(3)]))
    5
    >>> Positions().fold(cat([Atom(0, 4), Fixed(3)]))
    Traceback (most recent call last):
    ...
    NotImplementedError: Positions does not handle Atom terms
    """

    def fold(self, t: Term) -> R:
        """The fold's value for ``t`` (its method for ``t``'s kind)."""
        return t.accept(self)

    def _unhandled(self, t: Term) -> R:
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(t).__name__} terms")

    def fixed(self, t: Fixed) -> R:
        return self._unhandled(t)

    def atom(self, t: Atom) -> R:
        return self._unhandled(t)

    def cat(self, t: Cat) -> R:
        return self._unhandled(t)

    def prod(self, t: Prod) -> R:
        return self._unhandled(t)

    def zip(self, t: Zip) -> R:
        return self._unhandled(t)

    def stack(self, t: Stack) -> R:
        return self._unhandled(t)

    def sel(self, t: Sel) -> R:
        return self._unhandled(t)


class ResolvedFold(TermFold[R]):
    """A fold over the resolved term: every (sub)term is resolved in ``store`` before dispatch.

    >>> from autogrow.axes import AxisStore, ResolvedFold
    >>> class Root(ResolvedFold[int]):
    ...     def atom(self, t):
    ...         return t.id
    >>> s = AxisStore()
    >>> a, b = s.new_atom(4, "a"), s.new_atom(4, "b")
    >>> s.unify(a, b, "example")
    >>> Root(s).fold(b)
    0
    """

    def __init__(self, store: AxisStore) -> None:
        self.store = store

    def fold(self, t: Term) -> R:
        """The fold's value for ``store.resolve(t)``."""
        return self.store.resolve(t).accept(self)
