"""Recurrent layers (nn.RNN, nn.GRU, nn.LSTM and their cells): widening is exact.

The hidden units of every layer and direction are one group: rows of the gate weights and
biases are ``(gates hidden)`` copy axes, the recurrent matrix's columns and the next layer's
input columns are reduce axes; with ``proj_size`` the projected units are a second group.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from models import max_rel_err
from torch import nn

import autogrow

# Every kind × layers × direction × layout; each combination of the last three takes one of
# the two factors, so that every kind is widened by both.
CONFIGS = [
    (
        kind,
        layers,
        bidirectional,
        batch_first,
        (2.0, 1.5)[(layers + bidirectional + batch_first) % 2],
    )
    for kind, layers, bidirectional, batch_first in itertools.product(
        ("RNN", "GRU", "LSTM"), (1, 2), (False, True), (False, True)
    )
]


class SeqNet(nn.Module):
    """Linear -> recurrent layer -> a Linear head on the outputs and one on the final state."""

    def __init__(
        self,
        kind: str,
        layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        proj_size: int = 0,
        nonlinearity: str = "tanh",
    ):
        super().__init__()
        kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        if proj_size:
            kw["proj_size"] = proj_size
        if kind == "RNN":
            kw["nonlinearity"] = nonlinearity
        self.inp = nn.Linear(3, 6)
        self.rnn = getattr(nn, kind)(6, 8, **kw)
        out = proj_size or 8
        self.head = nn.Linear((2 if bidirectional else 1) * out, 2)
        self.state_head = nn.Linear(out, 2)

    def forward(self, x):
        if isinstance(self.rnn, nn.LSTM):
            out, (h, c) = self.rnn(torch.tanh(self.inp(x)))
        else:
            out, h = self.rnn(torch.tanh(self.inp(x)))
        return self.head(out), self.state_head(h[-1])


def _inputs(batch_first: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, 5, 3) if batch_first else (5, 2, 3), generator=g)


def _check_exact(model: nn.Module, wide: nn.Module, x) -> None:
    model.eval()
    wide.eval()
    with torch.no_grad():
        for old, new in zip(model(x), wide(x)):
            assert max_rel_err(new, old) < 1e-4


@pytest.mark.parametrize("kind,layers,bidirectional,batch_first,factor", CONFIGS)
def test_widen_recurrent_exact(kind, layers, bidirectional, batch_first, factor):
    torch.manual_seed(0)
    model = SeqNet(kind, layers, bidirectional, batch_first).eval()
    x = _inputs(batch_first)
    wide = autogrow.widen(model, factor, example_inputs=(x,), seed=1)
    hidden = round(8 * factor)
    assert wide.rnn.hidden_size == hidden and wide.rnn.input_size == round(6 * factor)
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    dirs = 2 if bidirectional else 1
    assert wide.rnn.weight_hh_l0.shape == (gates * hidden, hidden)
    if layers == 2:
        assert wide.rnn.weight_ih_l1.shape == (gates * hidden, dirs * hidden)
    assert wide.head.in_features == dirs * hidden
    _check_exact(model, wide, x)
    _check_exact(model, wide, _inputs(batch_first, seed=1))  # not only on the example inputs


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_lstm_proj_size_is_its_own_group(layers, bidirectional):
    torch.manual_seed(0)
    model = SeqNet("LSTM", layers, bidirectional, batch_first=True, proj_size=5).eval()
    x = _inputs(True)
    graph = autogrow.analyze(model, (x,))
    layouts = {(m.param, m.dim): (g.name, m.role, m.layout) for g in graph.groups
               for m in g.members}  # fmt: skip
    proj, hidden = layouts[("rnn.weight_hr_l0", 0)][0], layouts[("rnn.weight_hr_l0", 1)][0]
    assert proj != hidden
    assert layouts[("rnn.weight_hh_l0", 1)][:2] == (proj, "reduce")  # reads the projection
    assert layouts[("rnn.weight_hh_l0", 0)][:2] == (hidden, "copy")
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    assert (wide.rnn.hidden_size, wide.rnn.proj_size) == (16, 10)
    _check_exact(model, wide, x)
    # Only the projection: the hidden units keep their width.
    wide = autogrow.widen(model, {proj: 7}, example_inputs=(x,), seed=0)
    assert (wide.rnn.hidden_size, wide.rnn.proj_size) == (8, 7)
    _check_exact(model, wide, x)


def test_layouts_gates_and_directions():
    model = SeqNet("LSTM", layers=2, bidirectional=True)
    graph = autogrow.analyze(model, (_inputs(False),))
    group = graph.group("rnn")
    layouts = {(m.param, m.dim): (m.role, m.layout) for m in group.members}
    atom = layouts[("rnn.weight_hh_l0", 1)][1]
    assert layouts[("rnn.weight_hh_l0", 0)] == ("copy", f"(4 {atom})")  # i, f, g, o gates
    assert layouts[("rnn.bias_ih_l1_reverse", 0)] == ("copy", f"(4 {atom})")
    assert layouts[("rnn.weight_ih_l1", 1)] == ("reduce", f"(2 {atom})")  # [forward | backward]
    assert layouts[("head.weight", 1)] == ("reduce", f"(2 {atom})")
    assert layouts[("state_head.weight", 1)] == ("reduce", atom)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_nonlinearity(nonlinearity):
    torch.manual_seed(0)
    model = SeqNet("RNN", 2, nonlinearity=nonlinearity).eval()
    x = _inputs(False)
    _check_exact(model, autogrow.widen(model, 1.5, example_inputs=(x,), seed=0), x)


def test_widen_inplace_refreshes_flat_weights():
    """In place, the module's parameters are swapped under it: its forward must use them."""
    torch.manual_seed(0)
    model = SeqNet("GRU", 2, bidirectional=True).eval()
    reference = SeqNet("GRU", 2, bidirectional=True).eval()
    reference.load_state_dict(model.state_dict())
    x = _inputs(False)
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0, inplace=True)
    assert wide is model and model.rnn.hidden_size == 16
    _check_exact(reference, model, x)


class LearnedState(nn.Module):
    """A GRU started from a learned initial state; reads the final state of both directions."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.rnn = nn.GRU(6, 8, num_layers=2, bidirectional=True)
        self.h0 = nn.Parameter(torch.randn(4, 1, 8))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h0 = self.h0.expand(-1, x.shape[1], -1).contiguous()
        out, h = self.rnn(self.inp(x), h0)
        return self.head(torch.cat([h[-2], h[-1]], dim=-1)) + self.head(out[-1])


def test_learned_initial_state_grows_with_the_hidden_units():
    torch.manual_seed(0)
    model = LearnedState().eval()
    x = _inputs(False)
    wide = autogrow.widen(model, 1.5, example_inputs=(x,), seed=0)
    assert wide.h0.shape == (4, 1, 12) and wide.rnn.hidden_size == 12
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


class GivenState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x, h0, c0):
        return self.head(self.rnn(x, (h0, c0))[0])


def test_initial_state_from_the_caller_freezes_the_hidden_units():
    x, h0, c0 = torch.randn(5, 2, 3), torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    graph = autogrow.analyze(GivenState(), (x, h0, c0))
    assert graph.group("rnn").frozen.startswith("model input")


def test_unbatched_input():
    torch.manual_seed(0)
    model = SeqNet("LSTM", 2, bidirectional=True, proj_size=4).eval()
    x = torch.randn(5, 3)
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    _check_exact(model, wide, x)


class Cells(nn.Module):
    """A cell unrolled by a Python loop over time (fx cannot trace it; torch.export does)."""

    def __init__(self, kind: str):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.cell = getattr(nn, kind)(6, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        state, hs = None, []
        for t in range(x.shape[1]):
            state = self.cell(self.inp(x[:, t]), state)
            hs.append(state[0] if isinstance(state, tuple) else state)
        return self.head(torch.stack(hs, 1))


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells(kind):
    torch.manual_seed(0)
    model = Cells(kind).eval()
    x = torch.randn(2, 4, 3)
    wide = autogrow.widen(model, 1.5, example_inputs=(x,), seed=0)
    assert wide.cell.hidden_size == 12 and wide.cell.input_size == 9
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


class ShapeBranch(nn.Module):
    """A branch on a shape: fx fails, torch.export traces the layer as ``aten.lstm``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.rnn = nn.LSTM(6, 8, num_layers=2, bidirectional=True, proj_size=4, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        if h.shape[1] > 2:
            h = torch.relu(h)
        return self.head(self.rnn(h)[0])


def test_exported_recurrent_op():
    torch.manual_seed(0)
    model = ShapeBranch().eval()
    x = torch.randn(2, 5, 3)
    graph = autogrow.analyze(model, (x,))
    assert graph.analysis.traced.kind == "export" and not graph.blocked
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    assert (wide.rnn.hidden_size, wide.rnn.proj_size) == (16, 8)
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4


def test_optimizer_state_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = dict(kind="LSTM", layers=2, bidirectional=True, batch_first=True, proj_size=5)
    model = SeqNet(**config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _inputs(True)
    sum(o.sum() for o in model(x)).backward()
    opt.step()
    wide, new_opt = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0, optimizer=opt)
    assert new_opt.state[wide.rnn.weight_hh_l1]["exp_avg"].shape == (64, 10)
    new_opt.zero_grad()
    sum(o.sum() for o in wide(x)).backward()
    new_opt.step()
    autogrow.save(wide, tmp_path, factory="test_recurrent:SeqNet", factory_kwargs=config)
    loaded = autogrow.load(tmp_path, trust=True).eval()
    wide.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(wide(x), loaded(x)))


class ZeroState(nn.Module):
    """Without biases, started from explicit zero states sized from the module's attributes."""

    def __init__(self, kind: str, **kw):
        super().__init__()
        self.rnn = getattr(nn, kind)(3, 8, bias=False, **kw)
        out = kw.get("proj_size") or 8
        self.head = nn.Linear(out * (2 if kw.get("bidirectional") else 1), 2)

    def forward(self, x):
        rnn = self.rnn
        layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
        h0 = torch.zeros(layers, x.shape[1], rnn.proj_size or rnn.hidden_size)
        if isinstance(rnn, nn.LSTM):
            c0 = x.new_zeros(layers, x.shape[1], rnn.hidden_size)
            return self.head(rnn(x, hx=(h0, c0))[0])
        return self.head(rnn(x, h0)[0])


@pytest.mark.parametrize(
    "kind,kw",
    [
        ("GRU", dict(num_layers=2)),
        ("LSTM", dict(proj_size=3, num_layers=2, bidirectional=True)),
        ("RNN", dict(bidirectional=True)),
    ],
)
def test_no_bias_and_zero_initial_state(kind, kw):
    torch.manual_seed(0)
    model = ZeroState(kind, **kw).eval()
    x = torch.randn(5, 2, 3)
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    assert wide.rnn.hidden_size == 16
    with torch.no_grad():
        assert max_rel_err(wide(x), model(x)) < 1e-4
