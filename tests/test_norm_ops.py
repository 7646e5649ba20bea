"""p-norms and F.normalize, transposed-parameter matmuls and mask-construction ops.

A p-norm over an axis counts a replicated unit once per replica, so the reduced axis is frozen
(``p = ±inf`` excepted: a max is unchanged by replication); over other axes (spatial positions)
the norm is taken unit by unit and the units widen.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import max_rel_err
from torch import nn

import autogrow


class Around(nn.Module):
    """conv -> fn -> conv, so that the channels between the convs are one group ``a``."""

    def __init__(self, fn):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.fn = fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


INF = float("inf")
OVER_SPATIAL = {
    "normalize": lambda h: F.normalize(h, dim=(2, 3)),
    "normalize_flat": lambda h: F.normalize(h.flatten(2), dim=-1).view_as(h),
    "torch.norm": lambda h: h / torch.norm(h, p=2, dim=(2, 3), keepdim=True),
    "torch.norm_positional": lambda h: h / torch.norm(h, 2, (2, 3), True),
    "Tensor.norm": lambda h: h / h.norm(2, dim=(2, 3), keepdim=True),
    "Tensor.norm_p1": lambda h: h / h.norm(1, dim=(2, 3), keepdim=True),
    "vector_norm": lambda h: h / torch.linalg.vector_norm(h, 3, dim=(2, 3), keepdim=True),
    "linalg.norm": lambda h: h / torch.linalg.norm(h, dim=(2, 3), keepdim=True),
    "normalize_inf_channels": lambda h: F.normalize(h, p=INF, dim=1),
    "vector_norm_inf_channels": lambda h: h / torch.linalg.vector_norm(h, INF, 1, True),
}
OVER_CHANNELS = {
    "normalize": lambda h: F.normalize(h, dim=1),
    "normalize_p1": lambda h: F.normalize(h, p=1.0, dim=1),
    "torch.norm": lambda h: h / torch.norm(h, dim=1, keepdim=True),
    "vector_norm": lambda h: h / torch.linalg.vector_norm(h, dim=1, keepdim=True),
    "linalg.norm_all": lambda h: (
        h / torch.linalg.norm(h.flatten(1), dim=1, keepdim=True)[:, :, None, None]
    ),
    "matrix_norm": lambda h: h / torch.linalg.matrix_norm(h, dim=(1, 2), keepdim=True),
}


def test_norm_over_replicated_units_changes():
    """Why the reduced axis is frozen: replicating units changes the L2 norm (even uniformly)."""
    x = torch.randn(3)
    replicated = x[torch.tensor([0, 1, 2, 0, 1, 2])]
    assert not torch.allclose(replicated.norm(), x.norm())  # √2 times larger
    assert torch.allclose(replicated.abs().max(), x.abs().max())  # p = inf: unchanged


@pytest.mark.parametrize("name", sorted(OVER_SPATIAL))
@pytest.mark.parametrize("factor", [2.0, 1.5])
def test_norm_over_other_axes_widens_exactly(name, factor):
    torch.manual_seed(0)
    model = Around(OVER_SPATIAL[name]).eval()
    x = torch.randn(2, 3, 5, 5)
    graph = autogrow.analyze(model, (x,))
    assert not graph.blocked and graph.group("a").widenable
    wide = autogrow.widen(model, factor, example_inputs=(x,), seed=0)
    assert wide.a.out_channels == round(8 * factor)
    with torch.no_grad():
        for inputs in (x, torch.randn(3, 3, 5, 5)):
            assert max_rel_err(wide(inputs), model(inputs)) < 1e-4


@pytest.mark.parametrize("name", sorted(OVER_CHANNELS))
def test_norm_over_the_units_freezes_them(name):
    graph = autogrow.analyze(Around(OVER_CHANNELS[name]), (torch.randn(2, 3, 5, 5),))
    assert not graph.blocked
    assert "over this axis" in graph.group("a").frozen


class GRN(nn.Module):
    """ConvNeXt-V2's global response normalisation, channels last: an L2 norm over the spatial
    axes, divided by its mean over channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(1, 1, 1, dim) * 0.5)
        self.beta = nn.Parameter(torch.randn(1, 1, 1, dim) * 0.5)

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 1)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(h)))))
        x = x + h.permute(0, 3, 1, 2)
        return self.head(x.mean(dim=(2, 3)))


def test_grn_widens_exactly():
    torch.manual_seed(0)
    model = ConvNeXtV2Block().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = autogrow.analyze(model, (x,))
    assert not graph.blocked
    assert graph.group("pwconv1").uniform  # GRN's mean over channels
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    assert wide.pwconv1.out_features == 64 and wide.grn.gamma.shape == (1, 1, 1, 64)
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


class ShapeBranch(nn.Module):
    """A branch on a shape: fx fails and torch.export decomposes F.normalize into ATen ops."""

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.dim = dim

    def forward(self, x):
        h = self.a(x)
        if h.shape[2] > 2:
            h = torch.relu(h)
        return self.b(F.normalize(h, dim=self.dim))


def test_exported_normalize():
    x = torch.randn(2, 3, 5, 5)
    graph = autogrow.analyze(ShapeBranch(1), (x,))
    assert graph.analysis.traced.kind == "export"
    assert "over this axis" in graph.group("a").frozen
    torch.manual_seed(0)
    model = ShapeBranch((2, 3)).eval()
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


class TransposedWeights(nn.Module):
    """Weights applied as ``x @ W.T`` (Falcon's and others' hand-written linears)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.w1 = nn.Parameter(torch.randn(8, 3))
        self.w2 = nn.Parameter(torch.randn(2, 8))

    def forward(self, x):
        w1 = {
            "T": lambda: self.w1.T,
            "t": lambda: self.w1.t(),
            "transpose": lambda: self.w1.transpose(0, 1),
            "permute": lambda: self.w1.permute(1, 0),
            "mT": lambda: self.w1.mT,
        }[self.how]()
        return torch.relu(x @ w1) @ self.w2.transpose(-1, -2)


@pytest.mark.parametrize("how", ["T", "t", "transpose", "permute", "mT"])
def test_matmul_with_a_transposed_parameter(how):
    torch.manual_seed(0)
    model = TransposedWeights(how)
    x = torch.randn(4, 3)
    graph = autogrow.analyze(model, (x,))
    roles = {(m.param, m.dim): m.role for g in graph.groups for m in g.members}
    assert roles[("w1", 0)] == "copy" and roles[("w2", 1)] == "reduce"
    wide = autogrow.widen(model, 1.5, example_inputs=(x,), seed=0)
    assert wide.w1.shape == (12, 3) and wide.w2.shape == (2, 12)
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


class PositionMask(nn.Module):
    """Mask ops on integer positions next to float units: they must not freeze the units."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x, positions):
        first = positions[:, :1] - 1
        starts = (torch.diff(positions, prepend=first, dim=-1) != 1).cumsum(-1)
        mask = (starts[:, :, None] == starts[:, None, :]) & (~(positions[:, None, :] < 0))
        h = self.a(x).masked_fill(~mask.any(-1)[..., None], 0.0)
        return self.b(h)


def test_position_mask_ops_do_not_block_units():
    torch.manual_seed(0)
    model = PositionMask().eval()
    x, positions = torch.randn(2, 5, 3), torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    graph = autogrow.analyze(model, (x, positions))
    assert not graph.blocked and graph.group("a").widenable
    wide = autogrow.widen(model, 2.0, example_inputs=(x, positions), seed=0)
    with torch.no_grad():
        assert max_rel_err(wide(x, positions), model(x, positions)) < 1e-4


def test_cumsum_keeps_its_shape_and_freezes_its_axis():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 8), nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h.cumsum(1)) + self.c(h.cumsum(-1))

    graph = autogrow.analyze(Net(), (torch.randn(2, 5, 3),))
    assert not graph.blocked
    assert "cumsum along this axis" in graph.group("a").frozen


def test_falcon_hidden_width_is_not_frozen_by_its_causal_mask():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.FalconConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        new_decoder_architecture=False,
        multi_query=False,
        parallel_attn=True,
        bias=False,
        alibi=False,
    )
    model = transformers.FalconForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 6))
    graph = autogrow.analyze(model, (ids,))
    mask_ops = {"diff", "cumsum", "sum", "__and__", "aten.diff.default", "aten.__and__.Tensor"}
    assert not [b for b in graph.analysis.blocked if b.call.name in mask_ops]
    assert graph.group("transformer.word_embeddings").widenable  # the hidden width
    wide = autogrow.widen(model, 2.0, example_inputs=(ids,), seed=0)
    assert wide.config.hidden_size == 64
    with torch.no_grad():
        assert max_rel_err(wide(ids).logits, model(ids).logits) < 1e-4


class Blur(nn.Module):
    """An anti-aliasing blur (timm's BlurPool2d, TResNet): a fixed depthwise filter buffer
    applied functionally, with the channel count kept in an attribute."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (k[:, None] * k[None, :] / 16).repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), self.filt, stride=2,
                        groups=self.channels)  # fmt: skip


def _blur_net(blur: type) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), blur(8), nn.Conv2d(8, 4, 1))


@pytest.mark.parametrize("factor", [2.0, 1.5])
def test_functional_depthwise_conv_updates_its_group_count(factor):
    torch.manual_seed(0)
    model = _blur_net(Blur).eval()
    x = torch.randn(2, 3, 9, 9)
    wide = autogrow.widen(model, factor, example_inputs=(x,), seed=0)
    assert wide[2].channels == round(8 * factor) == wide[2].filt.shape[0]
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


def test_timm_blur_pool():
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model = _blur_net(layers.BlurPool2d).eval()
    x = torch.randn(2, 3, 9, 9)
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    assert wide[2].channels == 16
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4
