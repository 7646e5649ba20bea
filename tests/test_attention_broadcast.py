"""scaled_dot_product_attention whose key/value lead axes broadcast against the query's:
multi-query attention (one key/value head read by every query head, as timm's
MultiQueryAttention2d in MobileNetV4/V5 passes it). The query heads grow; the shared key and
value stay one head; the output projection divides the replicated heads, so growth is exact."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from autogrow.verify import relative_error


class MultiQueryAttention(nn.Module):
    """q: (b, heads, n, d); k, v: (b, 1, n, d), broadcast over the heads."""

    def __init__(self, dim: int = 16, heads: int = 4, head_dim: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.inp = nn.Linear(6, dim)
        self.query = nn.Linear(dim, heads * head_dim)
        self.key = nn.Linear(dim, head_dim)
        self.value = nn.Linear(dim, head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.inp(x)
        q = self.query(h).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.key(h).unsqueeze(1)
        v = self.value(h).unsqueeze(1)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.head(h + self.proj(o))


def _widen(model: nn.Module, factor: float, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error", autogrow.GrowthWarning)  # every group grows as asked
        return autogrow.widen(model, factor, example_inputs=(x,), seed=0)


@pytest.mark.parametrize("factor", [2.0, 1.5])
def test_multi_query_attention_grows_query_heads_exactly(factor):
    torch.manual_seed(0)
    model = MultiQueryAttention().eval()
    x = torch.randn(2, 5, 6)
    wide = _widen(model, factor, x)
    assert wide.query.out_features == int(16 * factor)  # heads grow, head_dim stays 4
    assert wide.heads == int(4 * factor) and wide.head_dim == 4
    assert wide.key.out_features == 4  # the one shared key head, head_dim fixed
    assert wide.proj.in_features == wide.heads * wide.value.out_features
    with torch.no_grad():
        assert relative_error(wide(x), model(x)) < 1e-5


class GroupedQueryAttention(MultiQueryAttention):
    """Two key/value heads for four query heads, repeated by sdpa's enable_gqa: the lead
    axes do not broadcast, and the rule says so (refused, never a wrong model)."""

    def __init__(self) -> None:
        super().__init__()
        self.key = nn.Linear(16, 8)
        self.value = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.inp(x)
        q = self.query(h).view(b, n, 4, 4).transpose(1, 2)
        k = self.key(h).view(b, n, 2, 4).transpose(1, 2)
        v = self.value(h).view(b, n, 2, 4).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.head(h + self.proj(o.transpose(1, 2).reshape(b, n, -1)))


def test_grouped_query_sdpa_is_refused_with_its_reason():
    torch.manual_seed(0)
    model = GroupedQueryAttention().eval()
    x = torch.randn(2, 5, 6)
    report = autogrow.analyze(model, (x,))
    assert "do not broadcast" in str(report)
