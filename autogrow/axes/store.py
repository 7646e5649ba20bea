"""The :class:`AxisStore`: unification of axis terms ("these axes carry the same units").

Unifying an atom with a structured term *binds* the atom to that term, which is how a chunked,
grouped or multi-head axis refines the group that produced it. Whatever cannot be unified is
frozen: frozen atoms keep their size and identity, so freezing is always a safe answer. The
term kinds themselves are in :mod:`autogrow.axes.terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from .store_folds import (
    _boundaries,
    _common_refinement,
    _Factor,
    _HasStack,
    _RequireUniform,
    _Resolve,
    _Settle,
    _Split,
)
from .terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip, prod

__all__ = ["AtomInfo", "AxisStore"]


@dataclass
class AtomInfo:
    """Facts attached to a root atom (a width group in the making)."""

    size: int
    origin: str
    frozen: str | None = None  # why, when frozen
    uniform: str | None = None  # why every unit must be replicated equally often
    binding: Term | None = None


class AxisStore:
    """Union-find over atoms, with bindings of atoms to structured terms.

    ``ties`` is a networkx graph over atom ids whose edges record every "same units" fact
    (with the op that stated it); the width groups are the unbound roots after resolution.
    ``ratio_ties`` links atoms that must be widened by the same integer factor (several atoms
    under one normalisation).
    """

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._info: dict[int, AtomInfo] = {}
        self.ties: nx.Graph = nx.Graph()
        self.ratio_ties: nx.Graph = nx.Graph()
        self.size_ties: list[tuple[Term, Term]] = []  # must keep equal sizes (interleaved parts)

    # -- atoms ---------------------------------------------------------------------------
    def new_atom(self, size: int, origin: str, frozen: str | None = None) -> Atom:
        aid = len(self._parent)
        self._parent[aid] = aid
        self._info[aid] = AtomInfo(size=size, origin=origin, frozen=frozen)
        self.ties.add_node(aid, origin=origin)
        return Atom(aid, size)

    def find(self, a: Atom) -> Atom:
        root = a.id
        while self._parent[root] != root:
            self._parent[root] = self._parent[self._parent[root]]
            root = self._parent[root]
        return Atom(root, self._info[root].size)

    def info(self, a: Atom) -> AtomInfo:
        return self._info[self.find(a).id]

    def atom(self, aid: int) -> Atom:
        return Atom(aid, self._info[aid].size)

    def all_atoms(self) -> list[Atom]:
        return [Atom(i, info.size) for i, info in self._info.items()]

    # -- resolution ----------------------------------------------------------------------
    def resolve(self, t: Term) -> Term:
        """The term with every atom replaced by its root or its binding, normalised."""
        return _Resolve(self).fold(t)

    def settle(self, t: Term, why: str = "stacked parts used") -> Term:
        """Replace stack/selector pairs by the conservative reading: the parts tied together."""
        return _Settle(self, why).fold(t)

    def leaf_atoms(self, t: Term) -> list[Atom]:
        """Distinct unbound root atoms under ``t``, in order."""
        seen: dict[int, Atom] = {}
        for a in self.resolve(t).atoms():
            seen.setdefault(a.id, a)
        return list(seen.values())

    # -- constraints ---------------------------------------------------------------------
    def freeze(self, t: Term, why: str) -> None:
        for a in self.leaf_atoms(t):
            info = self._info[a.id]
            if info.frozen is None:
                info.frozen = why

    def require_uniform(self, t: Term, why: str) -> None:
        """Every unit along ``t`` must be replicated equally often (a norm averages over it).

        Factors of a product are independently uniform; the parts of a concatenation must also
        share one replication factor (a ratio tie), else the mean over the whole axis moves.
        """
        _RequireUniform(self, why).fold(t)

    def _bind(self, a: Atom, t: Term, why: str) -> None:
        if _HasStack().fold(t):
            t = self.settle(t, why)
            if isinstance(t, Atom) and t.id == a.id:
                return
        info = self._info[a.id]
        info.binding = t
        for b in t.atoms():
            self.ties.add_edge(a.id, b.id, why=why, kind="refines")
        if info.frozen:
            self.freeze(t, info.frozen)
        if info.uniform:
            self.require_uniform(t, info.uniform)

    def _union(self, a: Atom, b: Atom, why: str) -> None:
        self.ties.add_edge(a.id, b.id, why=why, kind="same")
        ia, ib = self._info[a.id], self._info[b.id]
        self._parent[b.id] = a.id
        ia.frozen = ia.frozen or ib.frozen
        ia.uniform = ia.uniform or ib.uniform

    # -- unification ---------------------------------------------------------------------
    def can_unify(self, t1: Term, t2: Term) -> bool:
        """Whether unifying would succeed without freezing anything (a cheap, sound check)."""
        a, b = self.resolve(t1), self.resolve(t2)
        if a.size != b.size:
            return False
        if a == b:
            return True
        if isinstance(a, Atom) or isinstance(b, Atom):
            atom, other = (a, b) if isinstance(a, Atom) else (b, a)
            return not isinstance(other, Fixed) and all(x.id != atom.id for x in other.atoms())
        if isinstance(a, Cat) and isinstance(b, Cat):
            return _boundaries(a) == _boundaries(b) and all(
                self.can_unify(x, y) for x, y in zip(a.parts, b.parts)
            )
        if isinstance(a, Prod) and isinstance(b, Prod):
            return [f.size for f in a.factors] == [f.size for f in b.factors] and all(
                self.can_unify(x, y) for x, y in zip(a.factors, b.factors)
            )
        if isinstance(a, Zip) and isinstance(b, Zip):
            return len(a.parts) == len(b.parts) and all(
                self.can_unify(x, y) for x, y in zip(a.parts, b.parts)
            )
        return False

    def unify(self, t1: Term, t2: Term, why: str) -> None:
        """State that two axes carry the same units; freeze both when that cannot be expressed."""
        a, b = self.resolve(t1), self.resolve(t2)
        if a.size != b.size:
            raise ValueError(f"cannot unify axes of sizes {a.size} and {b.size} ({why})")
        if a == b:
            return
        if isinstance(a, (Stack, Sel)) or isinstance(b, (Stack, Sel)):
            a, b = self.settle(a, why), self.settle(b, why)
            if a == b:
                return
        if isinstance(a, Zip) and isinstance(b, Zip) and len(a.parts) == len(b.parts):
            for x, y in zip(a.parts, b.parts):
                self.unify(x, y, why)
            return
        if isinstance(a, Atom) and isinstance(b, Atom):
            self._union(a, b, why)
        elif isinstance(a, Atom) or isinstance(b, Atom):
            atom, other = (a, b) if isinstance(a, Atom) else (b, a)
            if isinstance(other, Fixed):
                self.freeze(atom, f"meets a fixed axis of size {other.size} at {why}")
            elif any(x.id == atom.id for x in other.atoms()):
                self.freeze(other, f"cyclic layout at {why}")
            else:
                self._bind(atom, other, why)
        elif isinstance(a, Fixed) or isinstance(b, Fixed):
            self.freeze(a, f"meets a fixed axis at {why}")
            self.freeze(b, f"meets a fixed axis at {why}")
        elif not self._unify_structured(a, b, why):
            self.freeze(a, f"incompatible layouts {a!r} vs {b!r} at {why}")
            self.freeze(b, f"incompatible layouts {a!r} vs {b!r} at {why}")

    def _unify_structured(self, a: Term, b: Term, why: str) -> bool:
        if isinstance(a, Zip) or isinstance(b, Zip):  # against another layout: parts tied
            a, b = self._unzip(a, why), self._unzip(b, why)
            self.unify(a, b, why)
            return True
        if isinstance(a, Cat) or isinstance(b, Cat):
            cuts = sorted(set(_boundaries(a)) | set(_boundaries(b)))
            sizes = [y - x for x, y in zip([0, *cuts], [*cuts, a.size])]
            pa, pb = self.split(a, sizes), self.split(b, sizes)
            if pa is None or pb is None:
                return False
            for x, y in zip(pa, pb):
                self.unify(x, y, why)
            return True
        assert isinstance(a, Prod) and isinstance(b, Prod)
        sizes = _common_refinement([f.size for f in a.factors], [f.size for f in b.factors])
        if sizes is None:
            return False
        fa, fb = self.factor(a, sizes), self.factor(b, sizes)
        if fa is None or fb is None:
            return False
        for x, y in zip(fa, fb):
            self.unify(x, y, why)
        return True

    def _unzip(self, t: Term, why: str) -> Term:
        """The conservative reading of an interleaving: one group repeated k times."""
        if not isinstance(t, Zip):
            return t
        for p in t.parts[1:]:
            self.unify(t.parts[0], p, why)
        return prod([self.resolve(t.parts[0]), Fixed(len(t.parts))])

    # -- refinement ------------------------------------------------------------------------
    def split(self, t: Term, sizes: list[int], why: str = "split") -> list[Term] | None:
        """Cut an axis into consecutive pieces of the given sizes, or None if impossible."""
        t = self.resolve(t)
        if len(sizes) == 1:
            return [t]
        return _Split(self, sizes, why).fold(t)

    def factor(self, t: Term, sizes: list[int], why: str = "reshape") -> list[Term] | None:
        """Express an axis as a row-major product of axes of the given sizes, or None."""
        t = self.resolve(t)
        assert math.prod(sizes) == t.size, (t, sizes)
        if len([s for s in sizes if s != 1]) <= 1:
            return [t if s == t.size and s != 1 else Fixed(s) for s in sizes]
        return _Factor(self, sizes, why).fold(t)

    @staticmethod
    def _place(targets: list[int], terms: list[Term]) -> list[Term]:
        """Put ``terms`` at the non-1 positions of ``targets`` and Fixed(1) elsewhere."""
        it = iter(terms)
        return [next(it) if s != 1 else Fixed(1) for s in targets]


# -- folds of the store -------------------------------------------------------------------
