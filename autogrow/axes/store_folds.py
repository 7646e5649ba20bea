"""The folds :class:`~autogrow.axes.store.AxisStore` runs over terms: resolving atoms to their
bindings, settling (freezing) what cannot widen, uniformity, splitting and factoring an axis.

Kept apart from the store itself so that each fold reads on its own; the store is passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .fold import ResolvedFold, TermFold
from .terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip, cat, prod, zip_

if TYPE_CHECKING:
    from .store import AxisStore


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
