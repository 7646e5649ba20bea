"""With ``verify=False`` a growth returns an exact model or raises an AutogrowError, never a
wrong one: the grown model is traced again and its graph compared with the original's
(autogrow.transforms.structure), and deepen's zeroed copies run out of place.

One small model per pattern seen on models outside the test suite (issue 12, section 4).
Ambiguous and child attributes read by forward are in test_attribute_probing.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_function, assert_unchanged, snapshot
from torch import nn

import autogrow
from autogrow import AutogrowError, StructureError


class BranchOnSize(nn.Module):
    """``if h.size(1) != self.filters``: torch.export keeps the example's branch; widened, the
    channels differ from ``filters`` and the other branch would run."""

    def __init__(self) -> None:
        super().__init__()
        self.filters = 8
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = F.relu(self.a(x))
        y = self.b(h)
        if h.size(1) != self.filters:
            y = y * 0.5
        return self.head(y)


class Residual(nn.Module):
    def __init__(self, d: int = 8, inplace: bool = False) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True) if inplace else nn.Tanh()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.act(x))


class InplaceFirst(nn.Module):
    """Residual branches that start with ``ReLU(inplace=True)``: the shortcut adds the
    overwritten input back, so a zeroed copy run in place would compute relu(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.Sequential(Residual(inplace=True), Residual(inplace=True))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


class Unpacked(nn.Module):
    """``a, b = self.blocks``: a third block does not unpack."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Residual(), Residual()])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        a, b = self.blocks
        return self.out(b(a(self.inp(x))) * 2)


class Paired(nn.Module):
    """Blocks taken in pairs: a fifth block would never run."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Residual() for _ in range(4)])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        for a, b in zip(self.blocks[::2], self.blocks[1::2]):
            h = b(a(h)) * 0.5 + h
        return self.out(h)


class SkipPerBlock(nn.Module):
    """A diffusion-style UNet: each down block pushes a skip tensor that an up block pops, so
    one more down block shifts every skip connection by one (same shapes, another function)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.down = nn.ModuleList([Residual(), Residual()])
        self.up = nn.ModuleList([nn.Linear(16, 8), nn.Linear(16, 8)])
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], -1))
        return self.out(h)


class ReadsLastModule(nn.Module):
    """Forward reads an attribute of the container's last module: a layer appended after it
    has no such attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.block(x)
        return self.out(h.view(-1, self.block[-1].normalized_shape[0]))


def _grow(kind: str, model: nn.Module, x: torch.Tensor, **kwargs):
    if kind == "widen":
        return autogrow.widen(model, 2.0, example_inputs=(x,), seed=0, **kwargs)
    return autogrow.deepen(model, example_inputs=(x,), **kwargs)


def _exact_or_refused(kind: str, model: nn.Module, x: torch.Tensor) -> nn.Module | AutogrowError:
    """The growth with verify=False: the model unchanged, and the result exact or an
    AutogrowError (returned)."""
    model.eval()
    snap = snapshot(model)
    try:
        grown = _grow(kind, model, x, verify=False)
    except AutogrowError as e:
        assert_unchanged(model, snap)
        return e
    assert_unchanged(model, snap)
    assert_same_function(grown, model, (x,))
    return grown


def test_branch_on_a_size_is_refused_without_verification():
    torch.manual_seed(0)
    model = BranchOnSize()
    error = _exact_or_refused("widen", model, torch.randn(2, 3, 8, 8))
    assert isinstance(error, StructureError)
    assert "runs call_function mul" in str(error)  # the op of the other branch


def test_branch_on_a_size_is_explained_with_verification():
    torch.manual_seed(0)
    with pytest.raises(StructureError, match="another path"):
        _grow("widen", BranchOnSize().eval(), torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("verify", [True, False])
def test_inplace_first_op_in_a_branch_deepens_exactly(verify):
    torch.manual_seed(0)
    model = InplaceFirst().eval()
    x = torch.randn(3, 4)
    reference = model(x.clone())
    deep = _grow("deepen", model, x, verify=verify)
    assert len(deep.blocks) == 3
    assert not deep.blocks[2].act.inplace  # the zeroed copy runs out of place
    assert deep.blocks[1].act.inplace  # the original blocks are as they were
    torch.testing.assert_close(deep(x.clone()), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        (Unpacked, "a, b = self.blocks"),
        (Paired, "never runs the inserted module"),
        (SkipPerBlock, "skips.pop()"),
        (ReadsLastModule, "normalized_shape"),
    ],
)
def test_deepen_that_changes_forward_is_refused_without_verification(cls, match):
    torch.manual_seed(0)
    error = _exact_or_refused("deepen", cls(), torch.randn(3, 4))
    assert isinstance(error, StructureError)
    assert match in str(error)


@pytest.mark.parametrize("cls", [Unpacked, SkipPerBlock, ReadsLastModule])
def test_deepen_in_place_is_undone_when_refused(cls):
    torch.manual_seed(0)
    model = cls().eval()
    snap = snapshot(model)
    modules = [n for n, _ in model.named_modules()]
    with pytest.raises(StructureError):
        _grow("deepen", model, torch.randn(3, 4), verify=False, inplace=True)
    assert [n for n, _ in model.named_modules()] == modules
    assert_unchanged(model, snap)


def test_outputs_that_differ_are_explained_as_a_structure_change():
    torch.manual_seed(0)
    with pytest.raises(StructureError, match="skips.pop()") as caught:
        _grow("deepen", SkipPerBlock().eval(), torch.randn(3, 4))
    assert isinstance(caught.value.__cause__, autogrow.VerificationError)


@pytest.mark.parametrize("cls", [Unpacked, ReadsLastModule])
def test_a_grown_model_that_fails_to_run_is_a_verification_error(cls):
    torch.manual_seed(0)
    with pytest.raises(autogrow.VerificationError, match="failed to run") as caught:
        _grow("deepen", cls().eval(), torch.randn(3, 4))
    assert not isinstance(caught.value, StructureError)


@pytest.mark.parametrize("kind", ["widen", "deepen"])
def test_models_whose_forward_does_not_change_still_grow_without_verification(kind):
    torch.manual_seed(0)
    grown = _exact_or_refused(kind, InplaceFirst(), torch.randn(3, 4))
    assert isinstance(grown, nn.Module)
