"""Property test: autogrow.widen on randomly generated DAG architectures.

A spec (plain nested tuples/lists, printable, rebuildable with :func:`build_model`) is drawn
by hypothesis, then turned into an ``nn.Module``.  For any drawn model, factor in [1.1, 3.0]
and seed, ``widen`` must either

* return a model of the same class whose eval-mode outputs match the original's to 1e-4
  (max|new - old| / max|old|), leaving the original untouched, or
* raise an ``AutogrowError`` subclass, leaving the original untouched.

Any other exception, a silently different model or a changed original is a bug.

To replay a failure by hand::

    from test_property_random_dags import build_model, make_inputs
    model = build_model(SPEC, weight_seed=W)   # SPEC and W are printed by hypothesis
"""

from __future__ import annotations

import os
from pprint import pformat

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from models import (
    assert_same_function,
    assert_unchanged,
    param_count,
    randomize_norms,
    snapshot,
)

SPATIAL = 8
MIN_C, MAX_C = 2, 12
ACTS = ["relu", "gelu", "silu", "tanh", "sigmoid"]

# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------

_ACT_MODULES = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class FunctionalAct(nn.Module):
    """An activation applied as a function call in forward (not an nn activation module)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        if self.name == "relu":
            return F.relu(x)
        if self.name == "gelu":
            return F.gelu(x)
        if self.name == "silu":
            return F.silu(x)
        if self.name == "tanh":
            return torch.tanh(x)
        return torch.sigmoid(x)


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Concat(nn.Module):
    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


class ChunkCombine(nn.Module):
    """a, b = x.chunk(2, dim=1); combine(left(a), right(b)) with cat / add / mul / glu."""

    def __init__(self, left: nn.Module, right: nn.Module, combine: str):
        super().__init__()
        self.left = left
        self.right = right
        self.combine = combine

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        a = self.left(a)
        b = self.right(b)
        if self.combine == "cat":
            return torch.cat([a, b], dim=1)
        if self.combine == "add":
            return a + b
        if self.combine == "mul":
            return a * b
        return a * torch.sigmoid(b)


class SELinear(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x):
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s.unsqueeze(-1).unsqueeze(-1)


class SEConv(nn.Module):
    """x * sigmoid(conv1x1(silu(conv1x1(adaptive_avg_pool(x)))))."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, hidden, 1)
        self.expand = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(self.pool(x)))))


class GlobalMaxPool(nn.Module):
    def forward(self, x):
        return x.amax(dim=(2, 3))


class SpatialRNN(nn.Module):
    """A recurrent layer run over the spatial positions in raster order:
    (B, C, H, W) -> (B, directions·out, H, W), out = proj_size or hidden."""

    def __init__(self, kind: str, c: int, hidden: int, layers: int, bidirectional: bool, proj: int):
        super().__init__()
        kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=True)
        if proj:
            kw["proj_size"] = proj
        self.rnn = getattr(nn, kind)(c, hidden, **kw)

    def forward(self, x):
        b, c, h, w = x.shape
        out = self.rnn(x.flatten(2).transpose(1, 2))[0]
        return out.transpose(1, 2).reshape(b, -1, h, w)


class SpatialAttention(nn.Module):
    """``nn.MultiheadAttention`` over the spatial positions, with a LayerNorm before it and
    the shortcut around it: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = self.norm(x.flatten(2).transpose(1, 2))
        out = self.attn(seq, seq, seq, need_weights=False)[0]
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class GlobalSubSample(nn.Module):
    """Twins' GlobalSubSampleAttn in small, on tokens ``(B, N, C)`` of an image of ``size``:
    queries from every token, keys and values from a strided conv (``sr_ratio``) and a
    LayerNorm, heads by ``reshape(..., self.num_heads, C // self.num_heads)``. ``sr_ratio`` is
    often drawn equal to ``num_heads``: only the latter sizes the heads axis, the former only
    built the conv (an attribute guessed by its value would be the wrong one half the time).
    fx cannot trace it alone (``*size`` iterates a traced argument)."""

    def __init__(self, c: int, heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads, self.sr_ratio = heads, sr_ratio
        self.q = nn.Linear(c, c)
        self.kv = nn.Linear(c, 2 * c)
        self.sr = nn.Conv2d(c, c, sr_ratio, stride=sr_ratio)
        self.norm = nn.LayerNorm(c)
        self.proj = nn.Linear(c, c)

    def forward(self, x, size):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)
        x = self.sr(x.transpose(1, 2).reshape(B, C, *size)).reshape(B, C, -1).transpose(1, 2)
        kv = self.kv(self.norm(x)).reshape(B, -1, 2, self.num_heads, C // self.num_heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.proj(out)


class SubSampleAttention(nn.Module):
    """:class:`GlobalSubSample` over the spatial positions, with the shortcut around it."""

    def __init__(self, c: int, heads: int, sr_ratio: int):
        super().__init__()
        self.attn = GlobalSubSample(c, heads, sr_ratio)

    def forward(self, x):
        b, c, h, w = x.shape
        out = self.attn(x.flatten(2).transpose(1, 2), (h, w))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class GatedSplit(nn.Module):
    """A split sized by an int attribute (``split([self.dim, self.dim])``), then a gate."""

    def __init__(self, f: int, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(f, 2 * dim)
        self.out = nn.Linear(dim, f)

    def forward(self, x):
        a, b = self.proj(x).split([self.dim, self.dim], dim=-1)
        return self.out(a * torch.sigmoid(b))


class HeadsView(nn.Module):
    """A view by attributes (``view(B, self.num_heads, self.head_dim)``), a softmax per head,
    and the heads joined again: the attention-head pattern without a sequence."""

    def __init__(self, f: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.proj = nn.Linear(f, num_heads * head_dim)
        self.out = nn.Linear(num_heads * head_dim, f)

    def forward(self, x):
        h = self.proj(x).view(x.shape[0], self.num_heads, self.head_dim)
        h = torch.softmax(h, dim=-1) * h
        return self.out(h.reshape(x.shape[0], self.num_heads * self.head_dim))


class RandomNet(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x):
        return self.head(self.features(x))


class ExportedNet(RandomNet):
    """fx cannot trace it (a branch on a size), so torch.export captures it: every size in its
    graph is a literal, synced with an attribute by probing the module that wrote it."""

    def forward(self, x):
        if x.shape[-1] != x.shape[-2]:
            raise ValueError("square images only")
        return self.head(self.features(x))


# --------------------------------------------------------------------------------------------
# spec strategies
#
# conv ops (state: channels c, spatial h):
#   ("conv", out, k, bias) ("gconv", out, k, groups) ("dwconv", k, mult)
#   ("bn",) ("gn", groups) ("act", name, functional) ("pool", "max"|"avg")
#   ("res", body) ("cat", [branch, ...]) ("chunk", left, right, combine) ("se", kind, hidden)
#   ("rnn", kind, hidden, layers, bidirectional, proj) ("mha", heads) ("gsa", heads, sr_ratio)
# head: "flatten" | "gap" | "gmp"
# linear ops (state: features f):
#   ("linear", out) ("bn1d",) ("ln",) ("act", name, functional) ("lres", prenorm, body)
#   ("gated", dim) ("heads", num_heads, head_dim)
# --------------------------------------------------------------------------------------------

channels = st.integers(MIN_C, MAX_C)


@st.composite
def act_op(draw):
    return ("act", draw(st.sampled_from(ACTS)), draw(st.booleans()))


@st.composite
def conv_op(draw, c: int, h: int, depth: int, allow_pool: bool):
    kinds = ["conv", "conv", "act", "act", "bn", "gn", "dwconv", "se", "rnn", "mha", "gsa"]
    if [g for g in (2, 3, 4) if c % g == 0]:
        kinds.append("gconv")
    if allow_pool and h >= 4:
        kinds.append("pool")
    if depth > 0:
        kinds += ["res", "cat"]
        if c % 2 == 0 and c >= 4:
            kinds += ["chunk", "chunk"]
    kind = draw(st.sampled_from(kinds))

    if kind == "conv":
        out = draw(channels)
        return ("conv", out, draw(st.sampled_from([1, 3])), draw(st.booleans())), out, h
    if kind == "act":
        return draw(act_op()), c, h
    if kind == "bn":
        return ("bn",), c, h
    if kind == "gn":
        g = draw(st.sampled_from([d for d in (1, 2, c) if c % d == 0]))
        return ("gn", g), c, h
    if kind == "gconv":
        g = draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0]))
        out = g * draw(st.integers(1, max(1, MAX_C // g)))
        return ("gconv", out, draw(st.sampled_from([1, 3])), g), out, h
    if kind == "dwconv":
        mult = draw(st.sampled_from([1, 2] if 2 * c <= MAX_C else [1]))
        return ("dwconv", draw(st.sampled_from([3, 1])), mult), c * mult, h
    if kind == "se":
        return ("se", draw(st.sampled_from(["linear", "conv"])), draw(st.integers(1, 6))), c, h
    if kind == "pool":
        return ("pool", draw(st.sampled_from(["max", "avg"]))), c, h // 2
    if kind == "rnn":
        rnn = draw(st.sampled_from(["RNN", "GRU", "LSTM"]))
        hidden = draw(st.integers(2, 6))
        proj = draw(st.integers(0, hidden - 1)) if rnn == "LSTM" else 0
        bidirectional = draw(st.booleans())
        op = ("rnn", rnn, hidden, draw(st.integers(1, 2)), bidirectional, proj)
        return op, (2 if bidirectional else 1) * (proj or hidden), h
    if kind == "mha":
        return ("mha", draw(st.sampled_from([d for d in (1, 2, 3, 4) if c % d == 0]))), c, h
    if kind == "gsa":
        return draw(gsa_op(c, h)), c, h
    if kind == "res":
        body, c2, _ = draw(conv_seq(c, h, depth - 1, allow_pool=False, min_ops=1, max_ops=3))
        if c2 != c:
            body.append(("conv", c, draw(st.sampled_from([1, 3])), True))
        return ("res", body), c, h
    if kind == "cat":
        n = draw(st.integers(2, 3))
        branches, total = [], 0
        for _ in range(n):
            b, cb, _ = draw(conv_seq(c, h, depth - 1, allow_pool=False, min_ops=1, max_ops=2))
            branches.append(b)
            total += cb
        return ("cat", branches), total, h
    # chunk
    half = c // 2
    left, cl, _ = draw(conv_seq(half, h, depth - 1, allow_pool=False, min_ops=0, max_ops=2))
    right, cr, _ = draw(conv_seq(half, h, depth - 1, allow_pool=False, min_ops=0, max_ops=2))
    combine = draw(st.sampled_from(["cat", "add", "mul", "glu"]))
    if combine == "cat":
        return ("chunk", left, right, combine), cl + cr, h
    if cl != cr:
        right.append(("conv", cl, 1, True))
    return ("chunk", left, right, combine), cl, h


@st.composite
def gsa_op(draw, c: int, h: int):
    heads = draw(st.sampled_from([d for d in (1, 2, 3, 4) if c % d == 0]))
    ratios = [r for r in (1, 2, heads) if h % r == 0]
    # equal to the head count where the spatial size allows: the by-value trap
    if heads in ratios and draw(st.booleans()):
        return ("gsa", heads, heads)
    return ("gsa", heads, draw(st.sampled_from(ratios)))


@st.composite
def conv_seq(draw, c: int, h: int, depth: int, allow_pool: bool, min_ops: int, max_ops: int):
    ops = []
    for _ in range(draw(st.integers(min_ops, max_ops))):
        op, c, h = draw(conv_op(c, h, depth, allow_pool))
        ops.append(op)
    return ops, c, h


@st.composite
def linear_op(draw, f: int, depth: int):
    kinds = ["linear", "linear", "act", "act", "bn1d", "ln", "gated", "heads"]
    if depth > 0:
        kinds.append("lres")
    kind = draw(st.sampled_from(kinds))
    if kind == "linear":
        out = draw(st.integers(2, 16))
        return ("linear", out), out
    if kind == "act":
        return draw(act_op()), f
    if kind in ("bn1d", "ln"):
        return (kind,), f
    if kind == "gated":
        return ("gated", draw(st.integers(2, 8))), f
    if kind == "heads":
        return ("heads", draw(st.integers(1, 4)), draw(st.integers(2, 4))), f
    body, f2 = draw(linear_seq(f, depth - 1, min_ops=1, max_ops=3))
    if f2 != f:
        body.append(("linear", f))
    return ("lres", draw(st.booleans()), body), f


@st.composite
def linear_seq(draw, f: int, depth: int, min_ops: int, max_ops: int):
    ops = []
    for _ in range(draw(st.integers(min_ops, max_ops))):
        op, f = draw(linear_op(f, depth))
        ops.append(op)
    return ops, f


@st.composite
def net_specs(draw, max_depth: int = 2):
    c_in = draw(st.integers(1, 4))
    # a conv stem, so that most models have a widenable group not tied to the input
    stem_c = draw(channels)
    stem = ("conv", stem_c, draw(st.sampled_from([1, 3])), draw(st.booleans()))
    rest, c, h = draw(conv_seq(stem_c, SPATIAL, max_depth, allow_pool=True, min_ops=0, max_ops=5))
    features = [stem, *rest]
    head = draw(st.sampled_from(["flatten", "gap", "gmp"]))
    f = c * h * h if head == "flatten" else c
    mlp, _ = draw(linear_seq(f, 1, min_ops=0, max_ops=3))
    return {
        "c_in": c_in,
        "features": features,
        "head": head,
        "mlp": mlp,
        "n_out": draw(st.integers(2, 5)),
    }


# --------------------------------------------------------------------------------------------
# spec -> module
# --------------------------------------------------------------------------------------------


def _act(op) -> nn.Module:
    _, name, functional = op
    return FunctionalAct(name) if functional else _ACT_MODULES[name]()


def build_conv_seq(ops, c: int) -> tuple[nn.Sequential, int]:
    layers = []
    for op in ops:
        kind = op[0]
        if kind == "conv":
            _, out, k, bias = op
            layers.append(nn.Conv2d(c, out, k, padding=k // 2, bias=bias))
            c = out
        elif kind == "gconv":
            _, out, k, g = op
            layers.append(nn.Conv2d(c, out, k, padding=k // 2, groups=g))
            c = out
        elif kind == "dwconv":
            _, k, mult = op
            layers.append(nn.Conv2d(c, c * mult, k, padding=k // 2, groups=c))
            c = c * mult
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(c))
        elif kind == "gn":
            layers.append(nn.GroupNorm(op[1], c))
        elif kind == "act":
            layers.append(_act(op))
        elif kind == "pool":
            layers.append(nn.MaxPool2d(2) if op[1] == "max" else nn.AvgPool2d(2))
        elif kind == "se":
            _, se_kind, hidden = op
            layers.append(SELinear(c, hidden) if se_kind == "linear" else SEConv(c, hidden))
        elif kind == "rnn":
            _, rnn, hidden, n_layers, bidirectional, proj = op
            layers.append(SpatialRNN(rnn, c, hidden, n_layers, bidirectional, proj))
            c = (2 if bidirectional else 1) * (proj or hidden)
        elif kind == "mha":
            layers.append(SpatialAttention(c, op[1]))
        elif kind == "gsa":
            layers.append(SubSampleAttention(c, op[1], op[2]))
        elif kind == "res":
            body, c2 = build_conv_seq(op[1], c)
            assert c2 == c
            layers.append(Residual(body))
        elif kind == "cat":
            branches, total = [], 0
            for b in op[1]:
                mod, cb = build_conv_seq(b, c)
                branches.append(mod)
                total += cb
            layers.append(Concat(branches))
            c = total
        elif kind == "chunk":
            _, left, right, combine = op
            lm, cl = build_conv_seq(left, c // 2)
            rm, cr = build_conv_seq(right, c // 2)
            layers.append(ChunkCombine(lm, rm, combine))
            c = cl + cr if combine == "cat" else cl
        else:
            raise ValueError(f"unknown conv op {op!r}")
    return nn.Sequential(*layers), c


def build_linear_seq(ops, f: int) -> tuple[nn.Sequential, int]:
    layers = []
    for op in ops:
        kind = op[0]
        if kind == "linear":
            layers.append(nn.Linear(f, op[1]))
            f = op[1]
        elif kind == "bn1d":
            layers.append(nn.BatchNorm1d(f))
        elif kind == "ln":
            layers.append(nn.LayerNorm(f))
        elif kind == "gated":
            layers.append(GatedSplit(f, op[1]))
        elif kind == "heads":
            layers.append(HeadsView(f, op[1], op[2]))
        elif kind == "act":
            layers.append(_act(op))
        elif kind == "lres":
            _, prenorm, body = op
            mod, f2 = build_linear_seq(body, f)
            assert f2 == f
            if prenorm:
                mod = nn.Sequential(nn.LayerNorm(f), *mod)
            layers.append(Residual(mod))
        else:
            raise ValueError(f"unknown linear op {op!r}")
    return nn.Sequential(*layers), f


def spatial_after(ops, h: int) -> int:
    for op in ops:
        if op[0] == "pool":
            h //= 2
    return h


def build_model(spec: dict, weight_seed: int = 0, exported: bool = False) -> RandomNet:
    torch.manual_seed(weight_seed)
    features, c = build_conv_seq(spec["features"], spec["c_in"])
    h = spatial_after(spec["features"], SPATIAL)
    if spec["head"] == "flatten":
        head_layers: list[nn.Module] = [nn.Flatten()]
        f = c * h * h
    elif spec["head"] == "gap":
        head_layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        f = c
    else:
        head_layers = [GlobalMaxPool()]
        f = c
    mlp, f = build_linear_seq(spec["mlp"], f)
    head = nn.Sequential(*head_layers, *mlp, nn.Linear(f, spec["n_out"]))
    net = (ExportedNet if exported else RandomNet)(features, head)
    return randomize_norms(net, seed=weight_seed + 1)


def make_inputs(spec: dict, batch: int, seed: int) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, spec["c_in"], SPATIAL, SPATIAL, generator=g),)


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------

# AUTOGROW_PROPERTY_SCALE=10 runs ten times as many examples (for bug hunts).
SCALE = float(os.environ.get("AUTOGROW_PROPERTY_SCALE", "1"))


def _n(examples: int) -> int:
    return max(1, int(examples * SCALE))


COMMON = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(max_examples=_n(50), **COMMON)
@given(spec=net_specs(), weight_seed=st.integers(0, 1000))
def test_generator_builds_valid_models(spec, weight_seed):
    """The generator itself (no autogrow): every drawn spec builds and runs forward."""
    note(pformat(spec))
    model = build_model(spec, weight_seed)
    x = make_inputs(spec, 3, weight_seed)
    model.train()
    out_train = model(*x)
    model.eval()
    with torch.no_grad():
        out = model(*x)
    assert out.shape == (3, spec["n_out"]) == out_train.shape
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def _check_outcome(model, snap, call, test_inputs, example):
    from autogrow.errors import AutogrowError

    try:
        new = call()
    except AutogrowError as e:
        event(f"refused: {type(e).__name__}")
        note(f"refused with {type(e).__name__}: {e}")
        assert_unchanged(model, snap)
        return None
    event("widened")
    assert_unchanged(model, snap)
    assert type(new) is type(model)
    assert new is not model
    assert param_count(new) > param_count(model), "the growth returned a model that is not larger"
    assert_same_function(new, model, test_inputs)
    assert_same_function(new, model, example)
    return new


@settings(max_examples=_n(50), **COMMON)
@given(
    spec=net_specs(),
    weight_seed=st.integers(0, 1000),
    factor=st.floats(1.1, 3.0, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
    train_mode=st.booleans(),
    verify=st.booleans(),
)
def test_widen_random_dag(spec, weight_seed, factor, seed, train_mode, verify):
    import autogrow

    note(
        f"spec = {pformat(spec)}\nweight_seed={weight_seed} factor={factor!r} seed={seed} "
        f"train_mode={train_mode} verify={verify}"
    )
    model = build_model(spec, weight_seed)
    model.train(train_mode)
    example = make_inputs(spec, 3, weight_seed + 7)
    test_inputs = make_inputs(spec, 5, weight_seed + 8)
    snap = snapshot(model)
    _check_outcome(
        model,
        snap,
        lambda: autogrow.widen(model, factor, example_inputs=example, seed=seed, verify=verify),
        test_inputs,
        example,
    )


@settings(max_examples=_n(20), **COMMON)
@given(
    spec=net_specs(),
    weight_seed=st.integers(0, 1000),
    verify=st.booleans(),
    data=st.data(),
)
def test_widen_random_dag_single_group(spec, weight_seed, verify, data):
    """Requesting one group (by the name analyze gives it) with a dict factor."""
    import autogrow
    from autogrow.errors import AutogrowError, FrozenGroupError

    note(f"spec = {pformat(spec)}\nweight_seed={weight_seed} verify={verify}")
    model = build_model(spec, weight_seed)
    example = make_inputs(spec, 3, weight_seed + 7)
    test_inputs = make_inputs(spec, 5, weight_seed + 8)
    snap = snapshot(model)
    try:
        graph = autogrow.analyze(model, example)
    except AutogrowError as e:
        note(f"analyze refused: {type(e).__name__}: {e}")
        assert_unchanged(model, snap)
        return
    assert_unchanged(model, snap)
    groups = list(graph.groups)
    assert groups, "every model has at least its input and output groups"
    # a name the group shares with a module asks for that module's output group instead
    # (graph.group's rule), which may be another one: only names that reach their own group
    named = [g for g in groups if graph.group(g.name) is g]
    free = [g for g in named if not g.frozen]
    frozen = [g for g in named if g.frozen]
    pick_frozen = not free or (frozen and data.draw(st.integers(0, 3), label="frozen?") == 0)
    group = data.draw(st.sampled_from(frozen if pick_frozen else free), label="group")
    extra = data.draw(st.integers(1, 12), label="extra width")
    call = lambda: autogrow.widen(  # noqa: E731
        model,
        {group.name: group.width + extra},
        example_inputs=example,
        seed=weight_seed,
        verify=verify,
    )
    if group.frozen:
        with pytest.raises(FrozenGroupError):
            call()
        assert_unchanged(model, snap)
        return
    _check_outcome(model, snap, call, test_inputs, example)


@settings(max_examples=_n(20), **COMMON)
@given(spec=net_specs(), weight_seed=st.integers(0, 1000), verify=st.booleans())
def test_deepen_random_dag(spec, weight_seed, verify):
    """deepen at its default places: exact (the grown graph re-traced without verification)
    or an AutogrowError, the original untouched."""
    import autogrow

    note(f"spec = {pformat(spec)}\nweight_seed={weight_seed} verify={verify}")
    model = build_model(spec, weight_seed).eval()
    example = make_inputs(spec, 3, weight_seed + 7)
    test_inputs = make_inputs(spec, 5, weight_seed + 8)
    snap = snapshot(model)
    _check_outcome(
        model,
        snap,
        lambda: autogrow.deepen(model, example_inputs=example, verify=verify),
        test_inputs,
        example,
    )


@st.composite
def attention_specs(draw):
    """A spec whose features start with sub-sampled attention after the stem (``sr_ratio`` often
    equal to the head count), then random ops."""
    spec = draw(net_specs(max_depth=1))
    stem = spec["features"][0]
    spec["features"] = [stem, draw(gsa_op(stem[1], SPATIAL)), *spec["features"][1:]]
    return spec


@settings(max_examples=_n(12), **COMMON)
@given(
    spec=attention_specs(),
    weight_seed=st.integers(0, 1000),
    factor=st.floats(1.1, 3.0, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
)
def test_widen_subsampled_attention_without_verification(spec, weight_seed, factor, seed):
    """Attribute-derived heads next to an attribute of the same value, LayerNorm, non-integer
    factors, ``verify=False``: exact or refused, never wrong."""
    import autogrow

    note(f"spec = {pformat(spec)}\nweight_seed={weight_seed} factor={factor!r} seed={seed}")
    model = build_model(spec, weight_seed).eval()
    example = make_inputs(spec, 3, weight_seed + 7)
    snap = snapshot(model)
    _check_outcome(
        model,
        snap,
        lambda: autogrow.widen(model, factor, example_inputs=example, seed=seed, verify=False),
        make_inputs(spec, 5, weight_seed + 8),
        example,
    )


@pytest.mark.slow
@settings(max_examples=_n(6), **COMMON)
@given(
    spec=attention_specs(),
    weight_seed=st.integers(0, 1000),
    factor=st.sampled_from([1.5, 2.0]),
)
def test_widen_exported_attention_without_verification(spec, weight_seed, factor):
    """The same models captured by torch.export (its graph holds every size as a literal; the
    attention module is probed traced alone with its ``size`` argument's value)."""
    import autogrow

    note(f"spec = {pformat(spec)}\nweight_seed={weight_seed} factor={factor!r}")
    model = build_model(spec, weight_seed, exported=True).eval()
    example = make_inputs(spec, 3, weight_seed + 7)
    snap = snapshot(model)
    _check_outcome(
        model,
        snap,
        lambda: autogrow.widen(model, factor, example_inputs=example, seed=0, verify=False),
        make_inputs(spec, 3, weight_seed + 8),
        example,
    )
