"""gMLP (spatial gating unit) at a non-integer factor: the residual stream is written by linear
layers and read through LayerNorms, so it grows by filled units; the gate's channels do not.

The gate splits fc1's output in halves u, v, normalises v = GELU(·) with a LayerNorm and
multiplies. A filled unit of v would have to equal the mean of the old units' GELU outputs for
every input (docs/widen.md: the mean fill is the only exact one under a LayerNorm), which no
row of fc1 followed by GELU produces, and uneven replicas change the norm's statistics: the
gate grows by whole multiples only, and the GrowthWarning says so."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from autogrow.verify import relative_error


class SpatialGatingBlock(nn.Module):
    """x + fc2(u * proj_tokens(norm(v))) with u, v = chunk(gelu(fc1(norm(x))), 2)."""

    def __init__(self, dim: int, seq_len: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.gate_norm = nn.LayerNorm(hidden // 2)
        self.gate_proj = nn.Linear(seq_len, seq_len)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = F.gelu(self.fc1(self.norm(x))).chunk(2, dim=-1)
        v = self.gate_proj(self.gate_norm(v).transpose(-1, -2)).transpose(-1, -2)
        return x + self.fc2(u * v)


class TinyGMLP(nn.Module):
    def __init__(self, dim: int = 8, seq_len: int = 5) -> None:
        super().__init__()
        self.stem = nn.Linear(3, dim)
        self.blocks = nn.Sequential(*(SpatialGatingBlock(dim, seq_len, 4 * dim) for _ in range(2)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))).mean(1))


def test_gmlp_stream_fills_at_one_and_a_half_and_the_gate_says_why_not():
    torch.manual_seed(0)
    model = TinyGMLP()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-trivial norm affines
    model.eval()
    x = torch.randn(2, 5, 3)
    assert autogrow.analyze(model, (x,)).group("stem").fill == "mean"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wide = autogrow.widen(model, 1.5, example_inputs=(x,), seed=0)
    assert wide.stem.out_features == 12 and wide.norm.normalized_shape == (12,)
    assert wide.blocks[0].fc1.out_features == 32  # the gate keeps its width
    kept = [str(w.message) for w in caught if issubclass(w.category, autogrow.GrowthWarning)]
    assert any("blocks.0.fc1" in m and "whole multiples" in m for m in kept), kept
    with torch.no_grad():
        assert relative_error(wide(x), model(x)) < 1e-5
