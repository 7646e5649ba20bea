"""Ops that Hugging Face models run and that had no rule (issue 12, section 3): index lists
written in code (Falcon's fused ``query_key_value`` split by ``x[..., [-2], :]``), multi-query
attention (one key/value head broadcast to every query head), and a literal sized
``num_heads + 2``. Each is checked on a small hand-written module under both tracers, then on
the tiny Hugging Face family (``benchmarks/hf_families.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autogrow
from autogrow.graph import build
from autogrow.rules import get_default_registry
from autogrow.tracing.trace import trace_export
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI


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
    assert len(graph.blocked) == 1 and "do not broadcast" in graph.blocked[0]


class WeightNormed(nn.Module):
    """Wav2Vec2's positional convolution: a grouped conv under weight norm over the taps."""

    def __init__(self, width: int = 8, groups: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(3, width)
        conv = nn.Conv1d(width, width, kernel_size=4, padding=2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + torch.relu(self.conv(h.transpose(1, 2))[..., :-1]).transpose(1, 2)
        return self.out(h)


@pytest.mark.parametrize("factor", [2.0, 1.5])
def test_weight_norm_grows_v_and_rescales_g_exactly(factor):
    torch.manual_seed(0)
    model = WeightNormed().eval()
    x = torch.randn(2, 6, 3)
    grown = autogrow.widen(model, factor, example_inputs=(x,), seed=0)  # verify on
    g = grown.conv.parametrizations.weight.original0
    assert grown.conv.weight.shape[0] == int(8 * factor) and g.shape == (1, 1, 4)
    assert relative_error(grown(x), model(x)) < 1e-5
    assert model.conv.weight.shape == (8, 4, 4)  # the caller's model is left alone


@pytest.mark.slow
def test_wav2vec2_hidden_grows_through_the_weight_normed_positional_conv(tmp_path):
    from autogrow.testing import randomize_constant_tensors

    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, do_stable_layer_norm=True, vocab_size=12,
        mask_time_prob=0.0,  # else masked_spec_embed, a training-only tensor, holds hidden
    )  # fmt: skip
    torch.manual_seed(0)
    model = randomize_constant_tensors(transformers.Wav2Vec2ForCTC(config).eval())
    grown = autogrow.widen(model, 2.0, example_inputs=(torch.randn(2, 400),), seed=0)
    assert (grown.config.hidden_size, grown.config.num_attention_heads) == (64, 8)
    x = torch.randn(2, 400)
    assert relative_error(grown(x).logits, model(x).logits) < 1e-4
    with torch.device("meta"):
        rebuilt = type(grown)(grown.config)
    shapes = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: v.shape for k, v in grown.state_dict().items()}
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path).eval()
    assert relative_error(loaded(x).logits, grown(x).logits) == 0.0


class Picks(nn.Module):
    """An index list counted from the end of a concatenation ``[a | b]``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(3, 2)
        self.head, self.pick = nn.Linear(8, 2), nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=-1)
        return self.head(h) + self.pick(h[:, [-2]])


def test_an_index_list_from_the_end_lets_the_part_before_it_grow():
    torch.manual_seed(0)
    model, x = Picks().eval(), torch.randn(4, 3)
    graph = autogrow.analyze(model, (x,))
    assert not graph.blocked
    assert graph.group("a").widenable and not graph.group("b").widenable
    grown = autogrow.widen(model, {"a": 12}, example_inputs=(x,), seed=0)
    assert grown.head.in_features == 14
    assert relative_error(grown(x), model(x)) < 1e-5
