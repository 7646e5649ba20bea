"""Axis terms: how the units along one tensor axis are composed of width-group spaces.

Every axis of every traced tensor and parameter is described by a *term*:

- ``Atom``: a space of units that may be widened (a width group is a set of tied atoms);
- ``Fixed(n)``: n positions that never change (batch, spatial, an RGB input);
- ``Cat(parts)``: the parts side by side (``torch.cat``; a DenseNet feature map);
- ``Prod(factors)``: row-major product, outermost first (``flatten``, heads × head_dim,
  ``(c g)`` after a channel shuffle).

:class:`AxisStore` unifies terms ("these axes carry the same units"). Unifying an atom with a
structured term *binds* the atom to that term, which is how a chunked, grouped or multi-head axis
refines the group that produced it. Whatever cannot be unified is frozen: frozen atoms keep
their size and identity, so freezing is always a safe answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import networkx as nx

from .fold import ResolvedFold, TermFold

__all__ = [
    "Atom",
    "AtomInfo",
    "AxisStore",
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
class _Resolve(TermFold[Term]):
    """Every atom replaced by its root or its binding, normalised (``AxisStore.resolve``)."""

    def __init__(self, store: AxisStore) -> None:
        self.store = store

    def fixed(self, t: Fixed) -> Term:
        return t

    def atom(self, t: Atom) -> Term:
        r = self.store.find(t)
        b = self.store._info[r.id].binding
        return r if b is None else self.fold(b)

    def cat(self, t: Cat) -> Term:
        return cat(self.fold(p) for p in t.parts)

    def prod(self, t: Prod) -> Term:
        return prod(self.fold(f) for f in t.factors)

    def zip(self, t: Zip) -> Term:
        return zip_(self.fold(p) for p in t.parts)

    def stack(self, t: Stack) -> Term:
        rows = tuple(self.fold(r) for r in t.rows)
        return rows[0] if all(r == rows[0] for r in rows) else Stack(rows)

    def sel(self, t: Sel) -> Term:
        return Sel(tuple(self.fold(r) for r in t.rows))


class _Settle(ResolvedFold[Term]):
    """Stack/selector pairs replaced by the parts tied together (``AxisStore.settle``)."""

    def __init__(self, store: AxisStore, why: str) -> None:
        super().__init__(store)
        self.why = why

    def fixed(self, t: Fixed) -> Term:
        return t

    def atom(self, t: Atom) -> Term:
        return t

    def cat(self, t: Cat) -> Term:
        return cat(self.fold(p) for p in t.parts)

    def prod(self, t: Prod) -> Term:
        return prod(self.fold(f) for f in t.factors)

    def zip(self, t: Zip) -> Term:
        return zip_(self.fold(p) for p in t.parts)

    def stack(self, t: Stack) -> Term:
        for r in t.rows[1:]:
            self.store.unify(t.rows[0], r, self.why)
        return self.store.resolve(t.rows[0])

    def sel(self, t: Sel) -> Term:
        return Fixed(t.size)


class _HasStack(TermFold[bool]):
    """Whether a stack or a selector occurs in the (unresolved) term."""

    def fixed(self, t: Fixed) -> bool:
        return False

    def atom(self, t: Atom) -> bool:
        return False

    def cat(self, t: Cat) -> bool:
        return any(self.fold(p) for p in t.parts)

    def prod(self, t: Prod) -> bool:
        return any(self.fold(f) for f in t.factors)

    def zip(self, t: Zip) -> bool:
        return any(self.fold(p) for p in t.parts)

    def stack(self, t: Stack) -> bool:
        return True

    def sel(self, t: Sel) -> bool:
        return True


class _RequireUniform(ResolvedFold[None]):
    """Mark every unit along the term as equally replicated (``AxisStore.require_uniform``)."""

    def __init__(self, store: AxisStore, why: str) -> None:
        super().__init__(store)
        self.why = why

    def fixed(self, t: Fixed) -> None:
        pass

    def atom(self, t: Atom) -> None:
        info = self.store._info[t.id]
        info.uniform = info.uniform or self.why

    def prod(self, t: Prod) -> None:
        for f in t.factors:
            self.fold(f)

    def _parts(self, t: Cat | Zip) -> None:
        carriers = [self.store.leaf_atoms(p) for p in t.parts]
        if any(len(c) != 1 for c in carriers):
            self.store.freeze(t, f"concatenation under a normalisation at {self.why}")
            return
        for c in carriers:
            self.fold(c[0])
        for (a,), (b,) in zip(carriers, carriers[1:]):
            self.store.ratio_ties.add_edge(a.id, b.id, why=self.why)

    cat = zip = _parts

    def _settled(self, t: Stack | Sel) -> None:
        self.fold(self.store.settle(t))

    stack = sel = _settled


class _Split(TermFold[list[Term] | None]):
    """Consecutive pieces of the given sizes (``AxisStore.split``), over a resolved term."""

    def __init__(self, store: AxisStore, sizes: list[int], why: str) -> None:
        self.store, self.sizes, self.why = store, sizes, why

    def fixed(self, t: Fixed) -> list[Term] | None:
        return [Fixed(s) for s in self.sizes]

    def atom(self, t: Atom) -> list[Term] | None:
        info = self.store._info[t.id]
        pieces = [self.store.new_atom(s, f"{info.origin}[{i}]") for i, s in enumerate(self.sizes)]
        self.store._bind(t, cat(pieces), self.why)
        return list(pieces)

    def cat(self, t: Cat) -> list[Term] | None:
        out: list[Term] = []
        parts = list(t.parts)
        for s in self.sizes:
            taken: list[Term] = []
            need = s
            while need > 0:
                p = parts.pop(0)
                if p.size <= need:
                    taken.append(p)
                    need -= p.size
                else:
                    halves = self.store.split(p, [need, p.size - need], self.why)
                    if halves is None:
                        return None
                    taken.append(halves[0])
                    parts.insert(0, halves[1])
                    need = 0
            out.append(cat(taken))
        return out

    def prod(self, t: Prod) -> list[Term] | None:
        sizes, why = self.sizes, self.why
        outer, inner = t.factors[0], prod(t.factors[1:])
        if any(s % inner.size for s in sizes):
            return None
        outer_pieces = self.store.split(outer, [s // inner.size for s in sizes], why)
        if outer_pieces is None:
            return None
        return [prod([o, inner]) for o in outer_pieces]

    def zip(self, t: Zip) -> list[Term] | None:
        sizes, why = self.sizes, self.why
        k = len(t.parts)
        if any(s % k for s in sizes):
            return self.store.split(self.store._unzip(t, why), sizes, why)
        cuts = [self.store.split(p, [s // k for s in sizes], why) for p in t.parts]
        if any(c is None for c in cuts):
            return None
        return [zip_(c[i] for c in cuts) for i in range(len(sizes))]  # type: ignore[index]

    def _settled(self, t: Stack | Sel) -> list[Term] | None:
        return self.fold(self.store.settle(t, self.why))

    stack = sel = _settled


class _Factor(TermFold[list[Term] | None]):
    """A row-major product of axes of the given sizes (``AxisStore.factor``), over a resolved
    term with at least two sizes other than 1."""

    def __init__(self, store: AxisStore, sizes: list[int], why: str) -> None:
        self.store, self.targets, self.why = store, list(sizes), why
        self.real = [s for s in sizes if s != 1]

    def fixed(self, t: Fixed) -> list[Term] | None:
        return [Fixed(s) for s in self.targets]

    def atom(self, t: Atom) -> list[Term] | None:
        info = self.store._info[t.id]
        pieces: list[Term] = [
            self.store.new_atom(s, f"{info.origin}.{i}") if s != 1 else Fixed(1)
            for i, s in enumerate(self.targets)
        ]
        self.store._bind(t, prod(pieces), self.why)
        return pieces

    def cat(self, t: Cat) -> list[Term] | None:
        store, targets, real, why = self.store, self.targets, self.real, self.why
        if len(real) == 2 and t.size % real[0] == 0:
            rows = store.split(t, [t.size // real[0]] * real[0], why)
            if rows is not None and all(not isinstance(r, Fixed) for r in rows):
                # (parts, within-part): a selector and a stack, so that a following transpose
                # and flatten can interleave the parts (channel shuffle) without tying them.
                for r in rows[1:]:
                    store.size_ties.append((rows[0], r))
                return store._place(targets, [Sel(tuple(rows)), Stack(tuple(rows))])
        k = targets[0] if targets[0] != 1 else None
        parts = t.parts
        if k is None or len(parts) % k or len({p.size for p in parts}) != 1:
            return None
        # k equal pieces: the outer factor enumerates them, so they must carry the same units.
        group = len(parts) // k
        rows = [cat(parts[i * group : (i + 1) * group]) for i in range(k)]
        for r in rows[1:]:
            store.unify(rows[0], r, why)
        rest = store.factor(rows[0], targets[1:], why)
        return None if rest is None else [Fixed(k), *rest]

    def prod(self, t: Prod) -> list[Term] | None:
        targets, why = self.targets, self.why
        factors = list(t.factors)
        out: list[Term] = []
        for s in targets:
            if s == 1:
                out.append(Fixed(1))
                continue
            taken: list[Term] = []
            have = 1
            while have < s:
                f = factors.pop(0)
                if have * f.size <= s:
                    taken.append(f)
                    have *= f.size
                else:
                    want = s // have
                    if s % have or f.size % want:
                        return None
                    halves = self.store.factor(f, [want, f.size // want], why)
                    if halves is None:
                        return None
                    taken.append(halves[0])
                    factors.insert(0, halves[1])
                    have = s
            out.append(prod(taken))
        if factors:  # leftover size-1 atoms still carry units: keep them in the last axis
            last = max(i for i, s in enumerate(targets) if s != 1)
            out[last] = prod([out[last], *factors])
        return out

    def zip(self, t: Zip) -> list[Term] | None:
        if self.real == [t.parts[0].size, len(t.parts)]:
            return self.store._place(self.targets, [Stack(t.parts), Sel(t.parts)])
        return self.store.factor(self.store._unzip(t, self.why), self.targets, self.why)

    def _settled(self, t: Stack | Sel) -> list[Term] | None:
        return self.store.factor(self.store.settle(t, self.why), self.targets, self.why)

    stack = sel = _settled


def _boundaries(t: Term) -> list[int]:
    if not isinstance(t, Cat):
        return []
    cuts, pos = [], 0
    for p in t.parts[:-1]:
        pos += p.size
        cuts.append(pos)
    return cuts


def _common_refinement(a: list[int], b: list[int]) -> list[int] | None:
    """Sizes that refine two row-major factorisations of the same number, or None."""
    out: list[int] = []
    a, b = [x for x in a if x != 1], [x for x in b if x != 1]
    while a and b:
        x, y = a[0], b[0]
        if x == y:
            out.append(x)
            a.pop(0)
            b.pop(0)
        elif x % y == 0:
            out.append(y)
            a[0] = x // y
            b.pop(0)
        elif y % x == 0:
            out.append(x)
            b[0] = y // x
            a.pop(0)
        else:
            return None
    return out if not a and not b else None
