"""Two attributes with one value, only one of which sizes a reshape (issue 12 §4).

timm's twins GlobalSubSampleAttn keeps ``num_heads == sr_ratio == 4``: ``num_heads`` sizes the
heads axis of a reshape, ``sr_ratio`` only built the sub-sampling conv. The model is captured by
torch.export (fx cannot trace it), and its attention module takes a ``size`` tuple fx cannot
trace alone either, so a by-value guess could not tell the two apart.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autogrow


class SubSampleAttn(nn.Module):
    """Keys and values from a strided conv of the input; ``num_heads == sr_ratio``."""

    def __init__(self, dim: int = 8, num_heads: int = 2, sr_ratio: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)
        x = x.transpose(1, 2).reshape(B, C, *size)
        x = self.sr(x).reshape(B, C, -1).transpose(1, 2)
        kv = self.kv(x).reshape(B, -1, 2, self.num_heads, C // self.num_heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SubSampleNet(nn.Module):
    """fx cannot trace it (a branch on a size), torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.attn = SubSampleAttn()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > 1:
            x = x * 2
        x = self.embed(x)
        H, W = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = x + self.attn(x, (H, W))
        return self.head(x.mean(1))


def _inputs() -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("verify", [False, True])
def test_heads_attribute_is_told_from_an_equal_ratio(verify):
    torch.manual_seed(0)
    net = SubSampleNet().eval()
    (x,) = _inputs()
    wide = autogrow.widen(net, 2.0, example_inputs=(x,), seed=0, verify=verify)
    assert wide.attn.q.out_features == 16
    assert (wide.attn.num_heads, wide.attn.sr_ratio) == (4, 2)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), net(x), rtol=1e-4, atol=1e-5)


def test_a_wrong_attribute_update_is_refused_by_the_structure_check(monkeypatch):
    """Without the arguments that let the attention module be traced alone, ``num_heads`` is
    not updated; the re-traced model then gives the reshape the old head count, which the
    plan's sizes catch with verify=False."""
    import autogrow.transforms.attributes as attributes_module

    monkeypatch.setattr(attributes_module, "plain_call_arguments", lambda *a: {})
    torch.manual_seed(0)
    net = SubSampleNet().eval()
    (x,) = _inputs()
    with pytest.raises(autogrow.StructureError, match=r"attn.*the plan needs") as caught:
        autogrow.widen(net, 2.0, example_inputs=(x,), seed=0, verify=False)
    assert "test_by_value_ambiguity.py" in str(caught.value)  # the model's line


class Windowed(nn.Module):
    """fx-traced: ``num_heads == window_size``, the heads axis sized by ``num_heads``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.window_size = 2
        self.proj = nn.Linear(5, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        B, N, _ = x.shape
        h = self.proj(x).view(B, N // self.window_size, self.window_size, self.num_heads, -1)
        h = torch.softmax(h, dim=-1).mean(2)  # per head: the head size must stay
        return self.out(h.reshape(B, N // self.window_size, -1))


def test_a_dropped_attribute_update_is_refused_in_an_fx_graph(monkeypatch):
    """Were the update of ``num_heads`` lost, the fx re-trace shows the literal 2 where the
    plan needs 4: a StructureError, not a model computing another function."""
    import autogrow.transforms.widen as widen_module

    real = widen_module.attribute_updates

    def lose_heads(*args):
        return [u for u in real(*args) if u[1] != "num_heads"]

    monkeypatch.setattr(widen_module, "attribute_updates", lose_heads)
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(autogrow.StructureError, match=r"op 'view'.*size 2 where the plan needs 4"):
        autogrow.widen(Windowed(), 2.0, example_inputs=(x,), seed=0, verify=False)


def test_windowed_heads_grow_exactly_without_verification():
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    net = Windowed().eval()
    wide = autogrow.widen(net, 2.0, example_inputs=(x,), seed=0, verify=False)
    assert (wide.num_heads, wide.window_size) == (4, 2)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), net(x), rtol=1e-4, atol=1e-5)


class Cached(nn.Module):
    """Caches a tensor in eval mode, as timm's LeViT caches its attention biases."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[str, torch.Tensor] = {}
        self.net = SubSampleNet()

    def forward(self, x):
        self.cache["x"] = x
        return self.net(x)


def test_call_arguments_are_recorded_by_name_and_the_model_left_as_it_was():
    from autogrow.transforms.attributes import plain_call_arguments

    model = Cached().train()
    (x,) = _inputs()
    found = plain_call_arguments(model, {"net.attn", "net.head"}, (x,))
    assert found == {"net.attn": {"size": (4, 4)}, "net.head": {}}
    assert model.cache == {} and model.training
