"""Net2Wider mappings: for each widened group, which old unit each new unit copies, and what
share of the old unit's outgoing weight each replica takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..axes.terms import Atom, AxisStore, Cat, Fixed, Prod, Sel, Stack, Term, Zip

SYMMETRIES = ("split", "none")


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
    uniform group, every unit the same number of times). Shares of one old unit sum to 1."""
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
    t = store.resolve(term)
    if isinstance(t, (Fixed, Sel)):
        return identity_map(t.size)
    if isinstance(t, Stack):  # only reachable once its rows were tied (settled)
        return term_map(store, t.rows[0], maps)
    if isinstance(t, Atom):
        return maps.get(t.id) or identity_map(t.size)
    if isinstance(t, Zip):
        k = len(t.parts)
        part_maps = [term_map(store, p, maps) for p in t.parts]
        source = torch.stack([m.source * k + j for j, m in enumerate(part_maps)], 1).reshape(-1)
        share = torch.stack([m.share for m in part_maps], 1).reshape(-1)
        return UnitMap(source, share)
    if isinstance(t, Cat):
        sources, shares, offset = [], [], 0
        for p in t.parts:
            m = term_map(store, p, maps)
            sources.append(m.source + offset)
            shares.append(m.share)
            offset += p.size
        return UnitMap(torch.cat(sources), torch.cat(shares))
    assert isinstance(t, Prod)
    result = term_map(store, t.factors[0], maps)
    old_size = t.factors[0].size
    for f in t.factors[1:]:
        inner = term_map(store, f, maps)
        source = (result.source[:, None] * f.size + inner.source[None, :]).reshape(-1)
        share = (result.share[:, None] * inner.share[None, :]).reshape(-1)
        result = UnitMap(source, share)
        old_size *= f.size
    return result


def new_size(store: AxisStore, term: Term, sizes: dict[int, int]) -> int:
    """The size of an axis after its groups take their new widths."""
    t = store.resolve(term)
    if isinstance(t, (Fixed, Sel)):
        return t.size
    if isinstance(t, Stack):
        return new_size(store, t.rows[0], sizes)
    if isinstance(t, Zip):
        return len(t.parts) * new_size(store, t.parts[0], sizes)
    if isinstance(t, Atom):
        return sizes.get(t.id, t.size)
    if isinstance(t, Cat):
        return sum(new_size(store, p, sizes) for p in t.parts)
    assert isinstance(t, Prod)
    out = 1
    for f in t.factors:
        out *= new_size(store, f, sizes)
    return out
