"""The axis-term algebra: unification, refinement, and the mappings composed from it."""

import pytest
import torch

import autogrow.axes
import autogrow.transforms.mapping
from autogrow.axes.fold import TermFold
from autogrow.axes.store import AxisStore
from autogrow.axes.terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip, cat, prod
from autogrow.transforms.mapping import UnitMap, identity_map, new_size, sample_map, term_map


def test_normalisation_flattens_and_merges_fixed():
    s = AxisStore()
    a = s.new_atom(4, "a")
    assert prod([Fixed(2), Fixed(3), a]) == Prod((Fixed(6), a))
    assert prod([Fixed(1), a]) == a
    assert cat([cat([a, Fixed(2)]), Fixed(3)]) == Cat((a, Fixed(5)))


def test_unifying_atoms_ties_them_into_one_root():
    s = AxisStore()
    a, b = s.new_atom(8, "a"), s.new_atom(8, "b")
    s.unify(a, b, "add")
    assert s.resolve(a) == s.resolve(b)


def test_unifying_an_atom_with_a_structure_binds_it():
    s = AxisStore()
    hidden = s.new_atom(12, "hidden")
    heads, dim = s.new_atom(3, "heads"), s.new_atom(4, "head_dim")
    s.unify(hidden, prod([heads, dim]), "view")
    assert s.resolve(hidden) == Prod((heads, dim))


def test_meeting_a_fixed_axis_freezes_the_atom():
    s = AxisStore()
    a = s.new_atom(3, "a")
    s.unify(a, Fixed(3), "input")
    assert s.info(a).frozen is not None


def test_split_of_an_atom_refines_it_into_pieces():
    s = AxisStore()
    a = s.new_atom(10, "a")
    pieces = s.split(a, [4, 6])
    assert [p.size for p in pieces] == [4, 6]
    assert s.resolve(a) == Cat(tuple(pieces))


def test_split_of_a_product_cuts_the_outer_factor():
    s = AxisStore()
    a = s.new_atom(6, "a")
    pieces = s.split(prod([a, Fixed(2)]), [6, 6])
    assert pieces is not None
    assert all(isinstance(p, Prod) and p.factors[1] == Fixed(2) for p in pieces)


def test_split_inside_a_unit_block_is_refused():
    s = AxisStore()
    a = s.new_atom(5, "a")
    assert s.split(prod([a, Fixed(4)]), [10, 10]) is None


def test_channel_shuffle_interleaves_the_parts_without_tying_them():
    s = AxisStore()
    a, b = s.new_atom(4, "a"), s.new_atom(4, "b")
    sel, stack = s.factor(cat([a, b]), [2, 4])  # view(2, 4)
    shuffled = prod([stack, sel])  # transpose, then flatten: "(c g)"
    assert shuffled == Zip((a, b))
    assert s.resolve(a) != s.resolve(b)  # each part keeps its own group
    assert prod([sel, stack]) == Cat((a, b))  # flattening without the transpose undoes it


def test_interleaving_maps_units_part_by_part():
    s = AxisStore()
    a, b = s.new_atom(2, "a"), s.new_atom(2, "b")
    maps = {a.id: UnitMap(torch.tensor([0, 1, 1]), torch.tensor([1.0, 0.5, 0.5]))}
    maps[b.id] = UnitMap(torch.tensor([0, 1, 0]), torch.tensor([0.5, 1.0, 0.5]))
    m = term_map(s, Zip((a, b)), maps)
    assert m.source.tolist() == [0, 1, 2, 3, 2, 1]  # a0 b0 a1 b1 a1 b0


def test_using_a_stacked_axis_otherwise_ties_the_parts():
    s = AxisStore()
    a, b, c = s.new_atom(4, "a"), s.new_atom(4, "b"), s.new_atom(4, "c")
    _, stack = s.factor(cat([a, b]), [2, 4])
    s.unify(stack, c, "conv input")
    assert s.resolve(a) == s.resolve(b) == s.resolve(c)


def test_incompatible_layouts_freeze_both_sides():
    s = AxisStore()
    a, b, c = s.new_atom(3, "a"), s.new_atom(5, "b"), s.new_atom(2, "c")
    d = s.new_atom(4, "d")
    s.unify(cat([a, b]), prod([c, d]), "odd")
    assert all(s.info(x).frozen for x in (a, b, c, d))


def test_can_unify_is_false_for_different_layouts():
    s = AxisStore()
    a, b = s.new_atom(4, "a"), s.new_atom(4, "b")
    assert not s.can_unify(prod([a, Fixed(2)]), cat([a, b]))
    assert s.can_unify(s.new_atom(8, "c"), prod([a, Fixed(2)]))


def test_uniform_concatenation_ties_the_replication_ratio():
    s = AxisStore()
    a, b = s.new_atom(4, "a"), s.new_atom(6, "b")
    s.require_uniform(cat([a, b]), "layer_norm")
    assert s.info(a).uniform and s.info(b).uniform
    assert s.ratio_ties.has_edge(a.id, b.id)


def test_sample_map_keeps_old_units_and_shares_sum_to_one():
    gen = torch.Generator().manual_seed(0)
    m = sample_map(5, 9, uniform=False, symmetry="split", generator=gen)
    assert m.source[:5].tolist() == [0, 1, 2, 3, 4]
    totals = torch.zeros(5, dtype=torch.float64).index_add_(0, m.source, m.share)
    assert torch.allclose(totals, torch.ones(5, dtype=torch.float64))
    replicated = torch.bincount(m.source)[m.source] > 1
    assert len(set(m.share[replicated].tolist())) > 1  # unequal shares: replicas diverge


def test_uniform_map_replicates_every_unit_equally():
    gen = torch.Generator().manual_seed(0)
    m = sample_map(4, 12, uniform=True, symmetry="none", generator=gen)
    assert torch.bincount(m.source).tolist() == [3, 3, 3, 3]
    assert torch.allclose(m.share, torch.full((12,), 1 / 3, dtype=torch.float64))


def test_term_map_composes_products_row_major():
    s = AxisStore()
    heads = s.new_atom(2, "heads")
    maps = {heads.id: UnitMap(torch.tensor([0, 1, 1]), torch.tensor([1.0, 0.5, 0.5]))}
    m = term_map(s, prod([heads, Fixed(3)]), maps)
    assert m.source.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert new_size(s, prod([heads, Fixed(3)]), {heads.id: 3}) == 9


def test_term_map_of_a_concatenation_offsets_each_piece():
    s = AxisStore()
    a, b = s.new_atom(2, "a"), s.new_atom(2, "b")
    maps = {b.id: UnitMap(torch.tensor([0, 1, 0]), torch.tensor([0.5, 1.0, 0.5]))}
    m = term_map(s, cat([a, b]), maps)
    assert m.source.tolist() == [0, 1, 2, 3, 2]
    assert term_map(s, Fixed(3), {}).source.tolist() == identity_map(3).source.tolist()


def test_atoms_are_compared_by_id():
    assert Atom(1, 4) == Atom(1, 7) and Atom(1, 4) != Atom(2, 4)


def test_every_term_kind_dispatches_to_its_own_fold_method():
    rows = (Atom(0, 2), Atom(1, 2))
    examples = {
        Fixed: Fixed(2),
        Atom: Atom(0, 2),
        Cat: Cat((Atom(0, 2), Fixed(1))),
        Prod: Prod((Atom(0, 2), Fixed(3))),
        Zip: Zip(rows),
        Stack: Stack(rows),
        Sel: Sel(rows),
    }
    assert set(Term.__subclasses__()) == set(examples), "a new term kind needs a TermFold method"

    class Kind(TermFold[str]):
        pass

    for name in ("fixed", "atom", "cat", "prod", "zip", "stack", "sel"):
        setattr(Kind, name, lambda self, t, name=name: name)
    seen = {kind: Kind().fold(t) for kind, t in examples.items()}
    assert seen == {kind: kind.__name__.lower() for kind in examples}


def test_a_fold_that_misses_a_kind_fails_loudly():
    class OnlyFixed(TermFold[int]):
        def fixed(self, t):
            return t.size

    assert OnlyFixed().fold(Fixed(3)) == 3
    with pytest.raises(NotImplementedError, match="OnlyFixed does not handle Zip"):
        OnlyFixed().fold(Zip((Fixed(2), Fixed(2))))


def test_new_size_lives_in_the_axes_layer():
    assert autogrow.transforms.mapping.new_size is autogrow.axes.new_size
    s = AxisStore()
    a, b = s.new_atom(2, "a"), s.new_atom(3, "b")
    t = cat([prod([a, Fixed(4)]), Zip((b, b)), Fixed(1)])
    assert new_size(s, t, {}) == t.size == 8 + 6 + 1
    assert new_size(s, t, {a.id: 3, b.id: 5}) == 12 + 10 + 1
