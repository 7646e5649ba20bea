"""torch's own transformer modules (nn.TransformerEncoderLayer / nn.TransformerEncoder /
nn.TransformerDecoderLayer / nn.MultiheadAttention) widen exactly.

torch.fx cannot follow TransformerEncoderLayer's forward (its fast-path checks branch on
tensor properties), so torch.export decomposes it and nn.MultiheadAttention into ATen ops;
the module constraint for nn.MultiheadAttention (``autogrow/rules/attention.py``) keeps the
attributes its forward and torch's fused fast path read consistent with the grown weights.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import autogrow
from autogrow.verify import relative_error

D, HEADS, FF = 16, 4, 32
TOL = 1e-5


class Wrapped(nn.Module):
    """Linear in -> body -> Linear out: the body's residual stream is free to widen."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.inp = nn.Linear(8, D)
        self.body = body
        self.out = nn.Linear(D, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.inp(x)))


class DecoderWrapped(nn.Module):
    """A decoder layer attending to an encoded memory."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(8, D)
        self.mem = nn.Linear(8, D)
        self.body = nn.TransformerDecoderLayer(
            D, HEADS, dim_feedforward=FF, dropout=0.0, batch_first=batch_first
        )
        self.out = nn.Linear(D, 8)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.inp(x), self.mem(memory)))


class DirectAttention(nn.Module):
    """nn.MultiheadAttention called directly (fx traces this: the module is a leaf)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(D)
        self.out = nn.Linear(D, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + a))


def _layer(batch_first: bool = True, norm_first: bool = False, activation: str = "relu"):
    return nn.TransformerEncoderLayer(
        D,
        HEADS,
        dim_feedforward=FF,
        dropout=0.0,
        batch_first=batch_first,
        norm_first=norm_first,
        activation=activation,
    )


def _encoder(batch_first: bool = True, norm_first: bool = False) -> nn.TransformerEncoder:
    with warnings.catch_warnings():  # enable_nested_tensor's note about norm_first
        warnings.simplefilter("ignore")
        return nn.TransformerEncoder(
            _layer(batch_first, norm_first), 2, norm=nn.LayerNorm(D), enable_nested_tensor=False
        )


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial norm affines and biases (ones and zeros would hide a wrong scaling)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@contextmanager
def _count_fast_path() -> Iterator[list[int]]:
    """Count calls of torch's fused encoder-layer kernel (the eval fast path)."""
    calls: list[int] = []
    fused = torch._transformer_encoder_layer_fwd

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    torch._transformer_encoder_layer_fwd = counting
    try:
        yield calls
    finally:
        torch._transformer_encoder_layer_fwd = fused


def _outputs(model: nn.Module, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(eval output with no grad: the fast path where torch takes it, eval output with grad
    enabled: the slow path, how many fast-path calls the first run made)."""
    with _count_fast_path() as calls, torch.no_grad():
        fast = model(*inputs)
    with torch.enable_grad():
        slow = model(*inputs).detach()
    return fast, slow, len(calls)


def _check_exact(model: nn.Module, grown: nn.Module, inputs: tuple, deeper: bool = False) -> int:
    """Both paths of the grown model agree with the original; returns the fast-path calls
    (the same count as the original's, unless the grown model has more layers)."""
    assert torch.backends.mha.get_fastpath_enabled()
    fast0, slow0, calls0 = _outputs(model, inputs)
    fast1, slow1, calls1 = _outputs(grown, inputs)
    assert relative_error(fast1, fast0) < TOL
    assert relative_error(slow1, slow0) < TOL
    assert deeper or calls1 == calls0  # the fast path wherever the original took it
    return calls1


def _attention_consistent(mha: nn.MultiheadAttention, embed: int, head_dim: int) -> None:
    """Every attribute the slow and the fast path read agrees with the grown weights."""
    assert mha.embed_dim == mha.kdim == mha.vdim == embed
    assert mha.head_dim == head_dim and mha.num_heads * head_dim == embed
    assert mha._qkv_same_embed_dim
    assert tuple(mha.in_proj_weight.shape) == (3 * embed, embed)
    assert tuple(mha.in_proj_bias.shape) == (3 * embed,)
    assert tuple(mha.out_proj.weight.shape) == (embed, embed)
    assert mha.out_proj.in_features == mha.out_proj.out_features == embed


def _encoder_layer_consistent(layer: nn.TransformerEncoderLayer, embed: int, ff: int) -> None:
    _attention_consistent(layer.self_attn, embed, D // HEADS)
    assert layer.norm1.normalized_shape == layer.norm2.normalized_shape == (embed,)
    assert (layer.linear1.in_features, layer.linear1.out_features) == (embed, ff)
    assert (layer.linear2.in_features, layer.linear2.out_features) == (ff, embed)
    assert tuple(layer.linear1.weight.shape) == (ff, embed)


CONFIGS = list(itertools.product((True, False), (False, True), ("relu", "gelu")))


@pytest.mark.parametrize(("batch_first", "norm_first", "activation"), CONFIGS)
def test_encoder_layer_doubles_exactly(batch_first, norm_first, activation):
    model = _randomize(Wrapped(_layer(batch_first, norm_first, activation)))
    inputs = (torch.randn(2, 5, 8),)
    grown = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, verify=False)
    _encoder_layer_consistent(grown.body, 2 * D, 2 * FF)
    assert grown.body.self_attn.num_heads == 2 * HEADS  # head_dim kept, heads doubled
    calls = _check_exact(model, grown, inputs)
    # torch's fast path needs batch_first; the grown model must still take it
    assert calls == (1 if batch_first else 0)


def test_bare_encoder_layer_keeps_its_stream_and_attention():
    """The original report: the layer's input and output fix d_model, so heads (tied to the
    embedding by nn.MultiheadAttention) stay and only the feed-forward width grows."""
    model = _randomize(_layer(batch_first=True))
    inputs = (torch.randn(2, 5, D),)
    grown = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, verify=False)
    _encoder_layer_consistent(grown, D, 2 * FF)
    assert _check_exact(model, grown, inputs) == 1


@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_stack_with_final_norm_doubles_exactly(batch_first):
    model = _randomize(Wrapped(_encoder(batch_first)))
    inputs = (torch.randn(2, 5, 8),)
    grown = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, verify=False)
    for layer in grown.body.layers:
        _encoder_layer_consistent(layer, 2 * D, 2 * FF)
    assert grown.body.norm.normalized_shape == (2 * D,)
    assert _check_exact(model, grown, inputs) == (2 if batch_first else 0)
    autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)  # verification agrees


def test_non_integer_factor_grows_feed_forward_and_says_why_heads_stay():
    """×1.5 through LayerNorm would need filled units; the stream is heads × head_dim, which
    filled units do not support yet, so it keeps its width with a GrowthWarning naming the
    reason, the feed-forward width grows by 1.5, and the model stays exact."""
    model = _randomize(Wrapped(_encoder()))
    inputs = (torch.randn(2, 5, 8),)
    with pytest.warns(autogrow.GrowthWarning, match="composite axis"):
        grown = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0, verify=False)
    for layer in grown.body.layers:
        _encoder_layer_consistent(layer, D, FF * 3 // 2)
    assert _check_exact(model, grown, inputs) == 2


def test_heads_must_grow_by_whole_heads():
    model = _randomize(Wrapped(_layer()))
    inputs = (torch.randn(2, 5, 8),)
    with pytest.raises(autogrow.AutogrowError, match="multiple of 4"):
        autogrow.widen(model, {"inp": HEADS + 2}, example_inputs=inputs)


@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_layer_doubles_exactly(batch_first):
    model = _randomize(DecoderWrapped(batch_first))
    inputs = (torch.randn(2, 5, 8), torch.randn(2, 7, 8))
    if not batch_first:
        inputs = tuple(x.transpose(0, 1) for x in inputs)
    grown = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, verify=False)
    for mha in (grown.body.self_attn, grown.body.multihead_attn):
        _attention_consistent(mha, 2 * D, D // HEADS)
    assert grown.body.linear1.out_features == 2 * FF
    _check_exact(model, grown, inputs)


def test_multihead_attention_called_directly():
    model = _randomize(DirectAttention())
    inputs = (torch.randn(2, 5, 8),)
    grown = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, verify=False)
    _attention_consistent(grown.attn, 2 * D, D // HEADS)
    _check_exact(model, grown, inputs)
    autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)  # verification agrees


def test_multihead_attention_refuses_a_non_integer_factor_saying_why():
    """The only widenable group is the stream, heads × head_dim under a LayerNorm: filled
    units do not fit a composite axis, so ×1.5 has nothing to grow and says so."""
    model = _randomize(DirectAttention())
    inputs = (torch.randn(2, 5, 8),)
    with pytest.raises(autogrow.ConstraintError, match="composite axis"):
        autogrow.widen(model, 1.5, example_inputs=inputs)


@pytest.mark.parametrize("after", [None, "body.layers.1"])
def test_deepen_pre_norm_encoder_stack_exactly(after):
    """A pre-norm layer is a residual block (zeroed out_proj and linear2: the identity), so
    deepen appends a third layer to the stack."""
    model = _randomize(Wrapped(_encoder(norm_first=True)))
    inputs = (torch.randn(2, 5, 8),)
    deep = autogrow.deepen(model, after=after, example_inputs=inputs, verify=False)
    assert len(deep.body.layers) == 3
    assert _check_exact(model, deep, inputs, deeper=True) == 3


def test_widen_then_deepen_encoder_stack():
    model = _randomize(Wrapped(_encoder(norm_first=True)))
    inputs = (torch.randn(2, 5, 8),)
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)
    deep = autogrow.deepen(wide, after="body.layers.1", example_inputs=inputs)
    for layer in deep.body.layers:
        _encoder_layer_consistent(layer, 2 * D, 2 * FF)
    assert _check_exact(model, deep, inputs, deeper=True) == 3


class MaskedEncoder(nn.Module):
    """An encoder with a key padding mask: torch's eval path packs the batch into a nested
    tensor (enable_nested_tensor) and runs the fused kernel on it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, D)
        self.body = nn.TransformerEncoder(_layer(), 2, enable_nested_tensor=True)
        self.out = nn.Linear(D, 8)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.inp(x), src_key_padding_mask=padding))


def test_encoder_with_padding_mask_on_the_nested_tensor_path():
    """torch expands the padding mask to ``num_heads`` with a size its code computes, which the
    exported graph holds as a fixed axis meeting the heads: the stream stays (the reason is
    shown by analyze), the feed-forward widths grow, and the nested-tensor path stays exact."""
    model = _randomize(MaskedEncoder())
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True  # the second sequence is two tokens shorter
    inputs = (torch.randn(2, 5, 8), padding)
    graph = autogrow.analyze(model, inputs)
    assert "fixed axis" in graph.group("inp").frozen
    grown = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, verify=False)
    for layer in grown.body.layers:
        _encoder_layer_consistent(layer, D, 2 * FF)
    assert _check_exact(model, grown, inputs) == 2
