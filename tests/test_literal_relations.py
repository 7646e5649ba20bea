"""Literal sizes that follow several attributes, or whose attributes cannot follow a widening
(issue 12, section 1): a difference ``dim - pdim``, tensor constants in the probed traces, and
groups kept at their width instead of a refusal."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import autogrow
from autogrow.transforms.attributes import AttrSource
from autogrow.transforms.literal_solve import Equation, solve_literals


class PartialMix(nn.Module):
    """``split([self.pdim, self.dim - self.pdim])``: a part of the channels is mixed, the rest
    passes (timm's SHViT single-head attention)."""

    def __init__(self, dim: int = 6, pdim: int = 2) -> None:
        super().__init__()
        self.dim, self.pdim = dim, pdim
        self.inp = nn.Linear(3, dim)
        self.mix = nn.Linear(pdim, pdim)
        self.out = nn.Linear(dim, 2)

    def forward(self, x):
        x1, x2 = torch.split(self.inp(x), [self.pdim, self.dim - self.pdim], dim=-1)
        return self.out(torch.cat([torch.relu(self.mix(x1)), x2], dim=-1))


class SharedState(nn.Module):
    """``self.state`` sizes two parts of one split: ``b`` could grow, ``c`` is part of the
    model's output and cannot. So the state axis keeps its size (the literal stays right) and
    the rest of the model grows."""

    def __init__(self, hidden: bool = True) -> None:
        super().__init__()
        self.state = 3
        self.inp = nn.Linear(4, 8) if hidden else nn.Identity()
        self.proj = nn.Linear(8 if hidden else 4, 2 * self.state)
        self.head = nn.Linear(self.state, 2)

    def forward(self, x):
        b, c = torch.split(self.proj(torch.relu(self.inp(x))), [self.state, self.state], dim=-1)
        return torch.cat([self.head(torch.relu(b)), c], dim=-1)


class HeadsWithConstant(nn.Module):
    """A tensor made in forward (fx records it as ``_tensor_constant<n>``, numbered on over
    traces of one model) next to a ``num_heads`` literal, as in timm's Swin attention."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.qkv = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        B, N, _ = x.shape
        h = self.qkv(x).reshape(B, N, self.num_heads, -1) * torch.ones(1).mul(0.5)
        return self.out(torch.relu(h).reshape(B, N, -1))


def _exact(model: nn.Module, x: torch.Tensor, factor: float, verify: bool) -> nn.Module:
    wide = autogrow.widen(model, factor, example_inputs=(x,), seed=0, verify=verify)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    return wide


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize(("factor", "dim", "pdim"), [(2.0, 12, 4), (1.5, 9, 3)])
def test_literal_that_is_a_difference_of_two_attributes(verify, factor, dim, pdim):
    net, x = PartialMix(), torch.randn(2, 3)
    wide = _exact(net, x, factor, verify)
    assert (wide.dim, wide.pdim) == (dim, pdim) and (net.dim, net.pdim) == (6, 2)
    assert wide.inp.out_features == dim and wide.mix.out_features == pdim


@pytest.mark.parametrize("verify", [True, False])
def test_attribute_that_cannot_follow_keeps_its_axis_and_the_rest_grows(verify):
    net, x = SharedState(), torch.randn(2, 4)
    with pytest.warns(autogrow.GrowthWarning, match="sizes it"):
        wide = _exact(net, x, 2.0, verify)
    assert wide.state == 3 and wide.proj.out_features == 6 and wide.head.in_features == 3
    assert wide.inp.out_features == 16  # the hidden layer grew


def test_attribute_that_cannot_follow_and_nothing_else_to_grow_is_refused():
    net, x = SharedState(hidden=False), torch.randn(2, 4)
    with pytest.raises(autogrow.HardcodedSizeError, match=r"state.*does not keep the model"):
        autogrow.widen(net, 2.0, example_inputs=(x,), seed=0)


def test_a_dict_factor_naming_a_kept_group_is_refused():
    net, x = SharedState(), torch.randn(2, 4)
    groups = [g.name for g in autogrow.analyze(net, (x,)).groups if g.widenable]
    with pytest.raises(autogrow.HardcodedSizeError, match="does not keep the model"):
        autogrow.widen(net, dict.fromkeys(groups, 2.0), example_inputs=(x,), seed=0)


@pytest.mark.parametrize("verify", [True, False])
def test_tensor_constants_do_not_look_like_a_structure_change(verify):
    net, x = HeadsWithConstant(), torch.randn(2, 3, 4)
    wide = _exact(net, x, 2.0, verify)
    assert wide.num_heads == 4 and wide.qkv.out_features > 8


def _source(attr: str, old: int, slope: int) -> AttrSource:
    return AttrSource("m", attr, None, old, slope, 0)


def test_solver_changes_the_fewest_attributes():
    dim, pdim = _source("dim", 6, 1), _source("pdim", 2, -1)
    pdim_alone = _source("pdim", 2, 1)
    # only the rest grows: dim alone follows (pdim would have to be negative)
    values, unsolved = solve_literals([Equation((dim, pdim), 4, 8)], {})
    assert (values, unsolved) == ({("m", "dim", None): 10}, {})
    # both parts grow: both change
    values, _ = solve_literals([Equation((dim, pdim), 4, 8), Equation((pdim_alone,), 2, 4)], {})
    assert values == {("m", "dim", None): 12, ("m", "pdim", None): 4}


def test_solver_reports_ambiguous_and_impossible_literals():
    heads, head_dim = _source("heads", 2, 3), _source("head_dim", 3, 2)
    _, unsolved = solve_literals([Equation((heads, head_dim), 6, 12)], {})
    assert "several attributes (m.heads, m.head_dim)" in unsolved[0]
    _, unsolved = solve_literals([Equation((_source("k", 2, 2),), 4, 5)], {})
    assert "no integer value of it gives 5" in unsolved[0]
    # an attribute the rules already bound counts with its new value
    values, unsolved = solve_literals([Equation((heads,), 6, 12)], {("m", "heads", None): 4})
    assert (values, unsolved) == ({}, {})


class HeadDimFromInput(nn.Module):
    """``view(B, N, 3, self.num_heads, C // self.num_heads)`` with C read from the input's shape
    (timm's SwinV2-CR attention): the head size is computed at run time from the input width,
    so widen must keep what it computes equal to the head axis."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.inp = nn.Linear(3, 8)
        self.qkv = nn.Linear(8, 3 * 8)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        x = self.inp(x)
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        attn = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).softmax(-1)
        h = (attn @ v.transpose(1, 2)).transpose(1, 2).reshape(B, N, -1)
        return self.out(torch.relu(x + self.proj(h)))


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_size_computed_from_a_width_stays_equal_to_its_axis(verify, factor):
    net, x = HeadDimFromInput(), torch.randn(2, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autogrow.GrowthWarning)
        wide = _exact(net, x, factor, verify)
    C, heads = wide.inp.out_features, wide.num_heads
    assert wide.qkv.out_features == 3 * heads * (C // heads)
