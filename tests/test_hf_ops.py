"""Ops that Hugging Face models run and that had no rule (issue 12, section 3): index lists
written in code (Falcon's fused ``query_key_value`` split by ``x[..., [-2], :]``), multi-query
attention (one key/value head broadcast to every query head), and a literal sized
``num_heads + 2``. Each is checked on a small hand-written module under both tracers, then on
the tiny Hugging Face family (``benchmarks/hf_families.py``)."""

from __future__ import annotations

import torch
from torch import nn

import autogrow
from autogrow.graph import build
from autogrow.rules import get_default_registry
from autogrow.tracing.trace import trace_export


class MultiQuery(nn.Module):
    """Falcon's multi-query attention: one fused projection of ``heads + 2`` head-sized
    pieces, the key and value picked by index lists, broadcast over the query heads."""

    def __init__(self, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, width + 2 * self.head_dim)
        self.dense = nn.Linear(width, width)
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        fused = self.qkv(x).view(b, s, self.num_heads + 2, self.head_dim)
        q, k, v = fused[..., :-2, :], fused[..., [-2], :], fused[..., [-1], :]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.out(torch.relu(self.dense(a)))


def test_exported_index_lists_split_the_fused_heads_and_multi_query_keeps_them_free():
    x = torch.randn(2, 5, 16)
    analysis = build(trace_export(MultiQuery().eval(), (x,)), get_default_registry())
    assert not analysis.blocked
    store = analysis.store
    heads = store.leaf_atoms(analysis.attention[0].heads)
    assert [a.size for a in heads] == [4] and not store.info(heads[0]).frozen
    # the fused rows: (heads | key head | value head) × head_dim, the head size frozen
    rows = store.resolve(analysis.params["qkv.weight"].terms[0])
    assert rows.size == 24 and heads[0] in store.leaf_atoms(rows)


def test_exported_index_constants_are_slices_and_position_gathers_block_nothing():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = MultiQuery()

        def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            # a mask built from positions, gathered by two index tensors (as causal masks are)
            rows = torch.arange(x.shape[1])
            mask = positions[rows[:, None], rows[None, :]]
            return self.inner(x) + mask.sum()

    x, positions = torch.randn(2, 5, 16), torch.randn(5, 5)
    analysis = build(trace_export(Net().eval(), (x, positions)), get_default_registry())
    assert not analysis.blocked
    heads = analysis.attention[0].heads
    assert not analysis.store.info(analysis.store.leaf_atoms(heads)[0]).frozen


def test_grouped_query_attention_with_other_head_counts_still_blocks():
    class Grouped(nn.Module):
        def forward(self, q, k, v):
            return nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    graph = autogrow.analyze(Grouped(), (q, kv, kv))
    assert len(graph.blocked) == 1 and "different head counts" in graph.blocked[0]
