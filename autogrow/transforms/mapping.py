"""Net2Wider mappings: for each widened group, which old unit each new unit copies, and what
share of the old unit's outgoing weight each replica takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..axes.fold import ResolvedFold
from ..axes.sizes import new_size
from ..axes.store import AxisStore
from ..axes.terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip

__all__ = [
    "SYMMETRIES",
    "TermMap",
    "UnitMap",
    "identity_map",
    "new_size",
    "sample_map",
    "term_map",
]

SYMMETRIES = ("split", "none", "paired")


@dataclass
class UnitMap:
    """``source[i]`` is the old unit new unit ``i`` copies; ``share[i]`` its outgoing share."""

    source: torch.Tensor
    share: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.source.numel())


def sample_map(
    old: int, new: int, *, uniform: bool, symmetry: str, generator: torch.Generator
) -> UnitMap:
    """The paper's random mapping: the old units in place, then random replicas (or, for a
    uniform group, every unit the same number of times). Shares of one old unit sum to 1:
    unequal random shares with ``symmetry="split"``, equal ones otherwise (``"paired"`` adds
    its zero-sum noise to the grown tensors afterwards, :mod:`.paired_noise`)."""
    if uniform:
        assert new % old == 0
        source = torch.arange(old).repeat(new // old)
    else:
        extra = torch.randint(0, old, (new - old,), generator=generator)
        source = torch.cat([torch.arange(old), extra])
    counts = torch.bincount(source, minlength=old).to(torch.float64)
    if symmetry == "split":
        # Unequal random shares: exact, and replicas receive different gradients from step one.
        weight = 0.5 + torch.rand(new, generator=generator, dtype=torch.float64)
        totals = torch.zeros(old, dtype=torch.float64).index_add_(0, source, weight)
        share = weight / totals[source]
    else:
        share = 1.0 / counts[source]
    share[counts[source] == 1] = 1.0
    return UnitMap(source, share)


def identity_map(n: int) -> UnitMap:
    return UnitMap(torch.arange(n), torch.ones(n, dtype=torch.float64))


def term_map(store: AxisStore, term: Term, maps: dict[int, UnitMap]) -> UnitMap:
    """The mapping of a whole axis, composed from its groups' mappings."""
    return TermMap(store, maps).fold(term)


class TermMap(ResolvedFold[UnitMap]):
    """The unit map of an axis from its groups' maps (root atom id -> map; identity otherwise).

    >>> from autogrow.axes import AxisStore, Fixed, cat
    >>> s = AxisStore()
    >>> a = s.new_atom(2, "a")
    >>> m = TermMap(s, {a.id: UnitMap(torch.tensor([0, 1, 1]), torch.ones(3))}).fold(
    ...     cat([Fixed(1), a])
    ... )
    >>> m.source.tolist()
    [0, 1, 2, 2]
    """

    def __init__(self, store: AxisStore, maps: dict[int, UnitMap]) -> None:
        super().__init__(store)
        self.maps = maps

    def fixed(self, t: Fixed) -> UnitMap:
        return identity_map(t.size)

    def sel(self, t: Sel) -> UnitMap:
        return identity_map(t.size)

    def stack(self, t: Stack) -> UnitMap:  # only reachable once its rows were tied (settled)
        return self.fold(t.rows[0])

    def atom(self, t: Atom) -> UnitMap:
        return self.maps.get(t.id) or identity_map(t.size)

    def zip(self, t: Zip) -> UnitMap:
        k = len(t.parts)
        part_maps = [self.fold(p) for p in t.parts]
        source = torch.stack([m.source * k + j for j, m in enumerate(part_maps)], 1).reshape(-1)
        share = torch.stack([m.share for m in part_maps], 1).reshape(-1)
        return UnitMap(source, share)

    def cat(self, t: Cat) -> UnitMap:
        sources, shares, offset = [], [], 0
        for p in t.parts:
            m = self.fold(p)
            sources.append(m.source + offset)
            shares.append(m.share)
            offset += p.size
        return UnitMap(torch.cat(sources), torch.cat(shares))

    def prod(self, t: Prod) -> UnitMap:
        result = self.fold(t.factors[0])
        for f in t.factors[1:]:
            inner = self.fold(f)
            source = (result.source[:, None] * f.size + inner.source[None, :]).reshape(-1)
            share = (result.share[:, None] * inner.share[None, :]).reshape(-1)
            result = UnitMap(source, share)
        return result
