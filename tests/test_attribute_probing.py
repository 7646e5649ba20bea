"""Literal sizes traced back to module attributes by probing (issue 12, section 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autogrow
from autogrow.transforms.attributes import AttributeProber


class SplitEmbed(nn.Module):
    """split([1, embed_dim, embed_dim]): a class token and two halves."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.embed_dim = d
        self.inp = nn.Linear(3, 1 + 2 * d)
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        c, a, b = self.inp(x).split([1, self.embed_dim, self.embed_dim], dim=-1)
        return self.out(a * torch.sigmoid(b)) * torch.sigmoid(c.sum(-1, keepdim=True))


class Windowed(nn.Module):
    """num_heads == window_size == 2: only probing tells which one sizes the heads axis."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.window_size = 2
        self.proj = nn.Linear(5, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        B, N, _ = x.shape
        h = self.proj(x).view(B, N // self.window_size, self.window_size, self.num_heads, -1)
        h = torch.relu(h.mean(2))
        return self.out(h.reshape(B, N // self.window_size, -1))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = 6
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(x)


class ChildAttr(nn.Module):
    """The forward code reads an attribute of a child module: ``self.block.hidden_size``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        a, b = torch.relu(self.block(x)).split(self.block.hidden_size // 2, dim=-1)
        return self.out(a * b)


class TupleSplit(nn.Module):
    """Split sizes held in a tuple attribute, as timm's MambaOut keeps ``split_indices``."""

    def __init__(self) -> None:
        super().__init__()
        self.split_indices = (4, 6)
        self.fc = nn.Linear(3, 10)
        self.a, self.b = nn.Linear(4, 2), nn.Linear(6, 2)

    def forward(self, x):
        u, v = torch.split(self.fc(x), self.split_indices, dim=-1)
        return self.a(u) + self.b(torch.relu(v))


class Ghost(nn.Module):
    """timm's GhostModule: ``out[:, :self.out_chs]`` keeps the whole concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.out_chs = 8
        self.primary = nn.Conv2d(3, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return self.head(out[:, : self.out_chs, :, :])


class Doubled(nn.Module):
    """Sizes ``2 * self.k``: the attribute must stay an integer."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 2
        self.fc = nn.Linear(3, 8)
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        u, v = self.fc(x).split([2 * self.k, 2 * self.k], dim=-1)
        return self.a(u) + self.b(v)


class Product(nn.Module):
    """A size that follows two attributes: which one to change is not known."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.dim = 2, 3
        self.fc, self.out = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)).view(-1, self.heads * self.dim))


class KeyValue(nn.Module):
    """key_dim == val_dim, as in timm's TinyViT attention: only val_dim follows a width."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = 2, 3, 3
        self.qkv = nn.Linear(4, 2 * 9)
        self.proj = nn.Linear(2 * 3, 4)

    def forward(self, x, x_prev=None):  # fx traces it alone with x_prev=None
        if x_prev is not None and x_prev.shape[1] > 0:  # fx cannot branch on a traced size
            x = x + x_prev
        B, N, _ = x.shape
        q, k, v = (
            self.qkv(x)
            .view(B, N, self.num_heads, -1)
            .split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        )
        attn = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).softmax(-1)
        return self.proj((attn @ v.transpose(1, 2)).transpose(1, 2).reshape(B, N, -1))


class Exported(nn.Module):
    """fx cannot trace this model (a branch on a size), torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.attn, self.head = nn.Linear(5, 4), KeyValue(), nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[1] > 1:
            x = torch.relu(x)
        return self.head(self.attn(self.inp(x)))


class NoAttr(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        u, v = self.fc(x).split([4, 4], dim=-1)  # the literal this test expects in the message
        return self.a(u) + self.b(v)


def _exact(model: nn.Module, x: torch.Tensor, verify: bool = True) -> nn.Module:
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0, verify=verify)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    return wide


@pytest.mark.parametrize("verify", [True, False])
def test_split_with_an_int_attribute(verify):
    net, x = SplitEmbed(), torch.randn(2, 3)
    wide = _exact(net, x, verify)
    assert wide.embed_dim == 8 and net.embed_dim == 4
    assert wide.out.in_features == 8


@pytest.mark.parametrize("verify", [True, False])
def test_two_attributes_with_the_same_value_are_told_apart(verify):
    net, x = Windowed(), torch.randn(2, 4, 5)
    wide = _exact(net, x, verify)
    assert (wide.num_heads, wide.window_size) == (4, 2)


@pytest.mark.parametrize("verify", [True, False])
def test_attribute_of_a_child_module(verify):
    net, x = ChildAttr(), torch.randn(2, 4)
    wide = _exact(net, x, verify)
    assert wide.block.hidden_size == 12


def test_wrong_guess_by_value_is_caught_and_probed():
    net, x = ChildAttr(), torch.randn(2, 4)
    net.unused = 3  # the literal's value, but the code reads self.block.hidden_size // 2
    wide = _exact(net, x, verify=False)
    assert (wide.unused, wide.block.hidden_size) == (3, 12)


@pytest.mark.parametrize("verify", [True, False])
def test_int_inside_a_tuple_attribute(verify):
    net, x = TupleSplit(), torch.randn(2, 3)
    wide = _exact(net, x, verify)
    assert wide.split_indices == (8, 12) and net.split_indices == (4, 6)


@pytest.mark.parametrize("verify", [True, False])
def test_literal_slice_bound_that_keeps_the_whole_axis(verify):
    net, x = Ghost(), torch.randn(1, 3, 5, 5)
    wide = _exact(net, x, verify)
    assert wide.out_chs == 16


@pytest.mark.parametrize("verify", [True, False])
def test_exported_model_probes_the_module_traced_alone(verify):
    net, x = Exported(), torch.randn(1, 4, 5)
    assert autogrow.analyze(net, (x,)).analysis.traced.kind == "export"
    wide = _exact(net, x, verify)
    assert (wide.attn.key_dim, wide.attn.val_dim) == (3, 6)


class KeyValueLiteral(KeyValue):
    def forward(self, x, x_prev=None):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([3, 3, 3], dim=3)
        attn = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).softmax(-1)
        return self.proj((attn @ v.transpose(1, 2)).transpose(1, 2).reshape(B, N, -1))


def test_exported_model_with_a_plain_literal_names_the_line():
    net, x = Exported(), torch.randn(1, 4, 5)
    net.attn = KeyValueLiteral()
    with pytest.raises(autogrow.HardcodedSizeError, match=r"written at .*test_attribute_probing"):
        autogrow.widen(net, 2.0, example_inputs=(x,), seed=0)


def test_inplace_updates_probed_attributes():
    net, x = TupleSplit(), torch.randn(2, 3)
    wide = autogrow.widen(net, 2.0, example_inputs=(x,), seed=0, inplace=True)
    assert wide is net and net.split_indices == (8, 12)


def test_literal_without_attribute_names_the_line():
    with pytest.raises(autogrow.HardcodedSizeError) as e:
        autogrow.widen(NoAttr(), 2.0, example_inputs=(torch.randn(2, 3),))
    assert "test_attribute_probing.py" in str(e.value) and "split" in str(e.value)


def test_relation_with_a_slope():
    net, x = Doubled(), torch.randn(2, 3)
    assert _exact(net, x, verify=False).k == 4
    with pytest.raises(autogrow.HardcodedSizeError, match="no integer value of it gives 5"):
        autogrow.widen(net, 1.25, example_inputs=(x,), seed=0)


def test_literal_following_several_attributes_is_refused():
    with pytest.raises(autogrow.HardcodedSizeError, match=r"several attributes \(heads, dim\)"):
        autogrow.widen(Product(), 2.0, example_inputs=(torch.randn(2, 3),))


def test_probing_finds_the_source_and_its_relation():
    net = ChildAttr()
    traced = autogrow.analyze(net, (torch.randn(2, 4),)).analysis.traced
    prober = AttributeProber.of(traced)
    node = next(n for n in traced.graph.nodes if n.target == "split")
    (src,) = prober.sources(node, 3, 0)
    assert (src.module, src.attr, src.solve(6)) == ("block", "hidden_size", 12)
    assert net.block.hidden_size == 6  # restored after probing


def test_no_probing_without_blocking_literal(monkeypatch):
    calls = []
    monkeypatch.setattr(AttributeProber, "__init__", lambda *a: calls.append(a))
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    autogrow.widen(net, 2.0, example_inputs=(torch.randn(2, 3),), seed=0)
    assert calls == []


@pytest.mark.parametrize(
    ("name", "attr"),
    [("skresnet18", "layer1.0.conv1.in_channels"), ("ghostnet_100", "blocks.0.0.ghost1.out_chs")],
)
def test_timm_models_whose_literals_follow_attributes(name, attr):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net, x = timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 64, 64)
    wide = autogrow.widen(net, 2.0, example_inputs=(x,), seed=0, verify=False)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), net(x), rtol=1e-4, atol=1e-4)
    module, _, name_ = attr.rpartition(".")
    old = getattr(net.get_submodule(module), name_)
    assert getattr(wide.get_submodule(module), name_) == 2 * old


class HeadsWithConstant(nn.Module):
    """``reshape(.., self.num_heads, -1)`` beside a tensor fx stows as a constant (an index
    buffer computed on eagerly, as BEiT's relative position bias does): probe traces and the
    final check must name that constant alike, however many traces ran before."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.inp, self.qkv, self.proj = nn.Linear(5, d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.table = nn.Parameter(torch.randn(7))
        self.register_buffer("index", torch.tensor([[0, 3, 1, 4]]), persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.inp(x)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index.view(-1)]  # the buffer's view is a constant tensor in fx
        a = torch.softmax(q @ k.transpose(-1, -2) + bias, -1) @ v
        return h + self.proj(a.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("verify", [True, False])
def test_probing_beside_a_constant_tensor_leaves_the_model_as_it_was(verify):
    torch.manual_seed(0)
    net, x = HeadsWithConstant().eval(), torch.randn(2, 4, 5)
    before = dict(vars(net))
    wide = _exact(net, x, verify)
    assert wide.num_heads == 4 and wide.qkv.out_features == 48
    assert vars(net).keys() == before.keys()  # no constants fx stowed on the caller's model
