"""Attention whose head size forward code computes from its input's width (``C //
self.num_heads``), in models only torch.export captures (issue 12: timm's convit, crossvit,
nest, twins, coat and eva attention)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autogrow
from autogrow.tracing.input_sizes import InputSize, ModuleSizes, stack_frames


class SplitProjectionAttention(nn.Module):
    """timm's GPSA / CrossAttention: queries and keys from one projection, values from another,
    both reshaped with ``C // self.num_heads``, ``C`` the input's width."""

    def __init__(self, dim: int = 8, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qk, self.v, self.proj = (
            nn.Linear(dim, 2 * dim),
            nn.Linear(dim, dim),
            nn.Linear(dim, dim),
        )

    def forward(self, x):
        B, N, C = x.shape
        qk = self.qk(x).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (qk[0] @ qk[1].transpose(-2, -1)).softmax(-1)
        v = self.v(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class FusedAttention(nn.Module):
    """timm's nest / twins / coat attention: one qkv projection reshaped with
    ``C // self.num_heads``."""

    def __init__(self, dim: int = 12, num_heads: int = 3) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class InputWidthOutput(nn.Module):
    """timm's EvaAttention: heads sized by ``self.num_heads`` and ``-1``, the attention's output
    reshaped back to the input's width ``C``."""

    def __init__(self, dim: int = 12, num_heads: int = 3) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = (
            p(x).reshape(B, N, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class SubSampledAttention(nn.Module):
    """timm's twins GlobalSubSampleAttn: keys and values from a strided conv over the tokens
    laid out as an image, ``reshape(B, C, *size)`` with ``size`` an argument without a
    default (fx, tracing the module alone, learns its length from the annotation)."""

    def __init__(self, dim: int = 8, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.kv, self.proj = (
            nn.Linear(dim, dim),
            nn.Linear(dim, 2 * dim),
            nn.Linear(dim, dim),
        )
        self.sr = nn.Conv2d(dim, dim, kernel_size=2, stride=2)

    def forward(self, x, size: tuple[int, int]):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        x = self.sr(x.permute(0, 2, 1).reshape(B, C, *size)).reshape(B, C, -1).permute(0, 2, 1)
        kv = (
            self.kv(x).reshape(B, -1, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        attn = (q @ kv[0].transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(B, N, C))


class SubSampledBlock(nn.Module):
    """torch.export captures it (a branch on a size)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.attn, self.out = nn.Linear(5, 8), SubSampledAttention(), nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[1] > 1:
            x = torch.relu(x)
        h = self.inp(x)
        return self.out(h + self.attn(h, (4, 4)))


class ExportedBlock(nn.Module):
    """A pre-norm residual block around ``attn``, then an MLP. With ``branch`` fx cannot trace
    it (a branch on a size): torch.export captures it, where ``C // self.num_heads`` is a plain
    number."""

    def __init__(self, attn: nn.Module, dim: int, branch: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.branch = branch  # False: fx traces it, and sees C // self.num_heads computed
        self.inp, self.norm, self.attn, self.out = (
            nn.Linear(5, dim),
            nn.LayerNorm(dim),
            attn,
            nn.Linear(dim, 3),
        )
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0, 0.2)

    def forward(self, x):
        if self.branch and x.shape[1] > 1:
            x = torch.relu(x)
        h = self.inp(x)
        h = h + self.attn(self.norm(h))
        return self.out(h + self.mlp(h))


def _block(kind: str, branch: bool = True) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    attn = {"split": SplitProjectionAttention, "fused": FusedAttention, "eva": InputWidthOutput}[
        kind
    ]()
    net = ExportedBlock(attn, attn.proj.in_features, branch).eval()
    return net, torch.randn(1, 4, 5)


def _widen_exact(net: nn.Module, x: torch.Tensor, factor: float, verify: bool) -> nn.Module:
    wide = autogrow.widen(net, factor, example_inputs=(x,), seed=0, verify=verify)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), net(x), rtol=1e-4, atol=1e-5)
    return wide


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_heads_grow_with_the_input_width_they_are_computed_from(factor, verify):
    net, x = _block("split")
    assert autogrow.analyze(net, (x,)).analysis.traced.kind == "export"
    wide = _widen_exact(net, x, factor, verify)
    width = wide.inp.out_features
    assert width == int(8 * factor)  # the residual stream grew as asked
    assert wide.attn.num_heads == 2 * width // 8  # whole heads of the old head size (4)
    assert wide.attn.v.out_features == width  # the values' head size kept: C // num_heads


def test_the_head_size_from_the_input_width_is_frozen():
    net, x = _block("split")
    graph = autogrow.analyze(net, (x,))
    (values,) = [g for g in graph.groups if g.name == "attn.v"]
    assert values.frozen is not None and "the input's width // 2 at" in values.frozen


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_heads_that_cannot_follow_the_input_width_keep_it(factor, verify):
    # 3 heads of 4 in a 12-wide stream: x1.5 gives 18 channels but round(4.5) = 4 heads, so
    # neither grows (the MLP does); x2 grows both
    for kind in ("fused", "eva"):
        net, x = _block(kind)
        wide = _widen_exact(net, x, factor, verify)
        assert wide.attn.num_heads * 4 == wide.inp.out_features == (24 if factor == 2 else 12)


def test_dict_factor_that_breaks_the_heads_names_the_groups():
    net, x = _block("fused")
    with pytest.raises(
        autogrow.ConstraintError, match="attn.qkv would break a size that forward code keeps equal"
    ):
        autogrow.widen(net, {"attn.qkv": 2.0}, example_inputs=(x,), seed=0)


@pytest.mark.parametrize("verify", [True, False])
def test_fx_sees_the_head_size_computed_from_the_input_width(verify):
    # fx: the size is a value computed from x.shape (Dynamic.quotient); before, widen x2 grew
    # the values' head size with the heads and returned a model whose reshape failed
    net, x = _block("split", branch=False)
    graph = autogrow.analyze(net, (x,))
    assert graph.analysis.traced.kind == "fx"
    # the residual stream is laid out as (heads head size) here: the values' head size is
    # one of its factors
    sizes = [g for g in graph.groups if any(m.param == "attn.v.weight" for m in g.members)]
    assert any(g.frozen and "the input's width // 2 at" in g.frozen for g in sizes)
    wide = _widen_exact(net, x, 2.0, verify)
    assert (wide.attn.num_heads, wide.inp.out_features, wide.attn.v.out_features) == (4, 16, 16)


@pytest.mark.parametrize("verify", [True, False])
def test_an_argument_annotated_as_a_pair_lets_the_module_trace_alone(verify):
    net, x = SubSampledBlock().eval(), torch.randn(1, 16, 5)
    assert autogrow.analyze(net, (x,)).analysis.traced.kind == "export"
    assert ModuleSizes.of(net.attn) is not None
    wide = _widen_exact(net, x, 2.0, verify)
    assert (wide.attn.num_heads, wide.inp.out_features, wide.attn.kv.out_features) == (4, 16, 32)


def test_module_sizes_read_the_arithmetic_of_a_module_traced_alone():
    sizes = ModuleSizes.of(SplitProjectionAttention())
    (reshape,) = [n for n in sizes.graph.nodes if n.target == "reshape" and n.args[0].target == "v"]
    frames = stack_frames(reshape.meta["stack_trace"])
    assert sizes.find(frames, (1, 4, 2, 4), 3) == InputSize(arg=0, dim=2, divisor=2)
    assert sizes.find(frames, (1, 4, 2, 4), 2) is None  # self.num_heads: a plain number


@pytest.mark.slow
def test_timm_convit_widens_exactly_without_verification():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net, x = timm.create_model("convit_tiny", pretrained=False).eval(), torch.randn(1, 3, 224, 224)
    wide = _widen_exact(net, x, 1.5, verify=False)
    attn, old = wide.blocks[0].attn, net.blocks[0].attn
    assert (attn.num_heads, attn.proj.out_features) == (6, 288)  # the residual stream grew
    assert (old.num_heads, old.proj.out_features) == (4, 192)
    assert attn.v.out_features == 288  # whole heads of the old head size (48)
