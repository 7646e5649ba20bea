"""Rules for recurrent layers: ``nn.RNN``, ``nn.GRU``, ``nn.LSTM`` and their cells.

A recurrent layer's hidden units are one axis for all its layers and directions (the module has
one ``hidden_size``). Every gate has a block of rows per hidden unit, so the rows of
``weight_ih``, ``weight_hh`` and the biases are ``(gates hidden)``: copy axes. The recurrent
matrix's columns (``weight_hh``) and the next layer's input columns read the hidden state: reduce
axes, divided among a unit's replicas. This is exact for the recurrence: if ``h_{t-1}`` holds
replicas, every gate's pre-activation is unchanged (the replicas' shares sum to one) and the
gates act unit by unit, so the cell state ``c_t`` and ``h_t`` hold replicas again. With
``proj_size`` the hidden units are internal (the cell state and the projection's input); the
projected units are a second axis, read by the recurrent matrix, the next layer and the output.

The rules are written against the ATen signatures (``aten.lstm``, ``aten.gru``,
``aten.rnn_tanh``, ``aten.lstm_cell`` ...), so an exported graph reaches them directly; module
calls in an fx trace are turned into the same calls by the adapters at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from ..axes.terms import Fixed, Term, prod
from .common import COPY, REDUCE, module_at, owner
from .registry import Call, ParamRef, RuleSet, TensorValue, target_name

if TYPE_CHECKING:
    from .context import RuleContext


rules = RuleSet()  # installed into a registry by autogrow.rules.build_default_registry

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_ZEROS = {"zeros", "new_zeros", "zeros_like"}


def _units(ctx: RuleContext, size: int, origin: str) -> Term:
    return ctx.store.new_atom(size, origin) if size > 1 else Fixed(size)


def _gate_rows(ctx: RuleContext, p: Any, gates: int, hidden: Term, call: Call) -> None:
    """Rows of a gate weight or bias: one block of hidden units per gate, copied."""
    if isinstance(p, TensorValue):
        ctx.unify(p.terms[0], prod([Fixed(gates), hidden]), call)
        ctx.role(p, 0, COPY, call)


def _reads(ctx: RuleContext, w: TensorValue, units: Term, call: Call) -> None:
    """Columns of a weight summed against an activation: a reduce axis."""
    ctx.unify(w.terms[1], units, call)
    ctx.role(w, 1, REDUCE, call)


def _is_zeros(node: Any) -> bool:
    return isinstance(node, fx.Node) and target_name(node.target) in _ZEROS


def _state_in(ctx: RuleContext, h: Any, node: Any, units: Term, call: Call) -> None:
    """An initial state ``([layers·directions,] [batch,] units)``: its units start the
    recurrence, so they carry the hidden units. A tensor of zeros (what the module creates when
    no state is passed) holds replicas of any units and ties nothing."""
    if not isinstance(h, TensorValue) or (_is_zeros(node) and h.param is None):
        return
    ctx.unify(h.terms[-1], units, call)
    ctx.role(h, h.ndim - 1, COPY, call)


def _hx_nodes(call: Call, count: int) -> list[Any]:
    """The fx nodes of the initial states (``None`` where unknown), ``count`` of them."""
    node = call.node
    arg = node.kwargs.get("hx", node.args[1] if len(node.args) > 1 else None)
    nodes = list(arg) if isinstance(arg, (list, tuple)) else [arg]
    return (nodes + [None] * count)[:count]


def _param(ctx: RuleContext, p: Any) -> Any:
    return ctx.param(p.name) if isinstance(p, ParamRef) else p


def recurrent(call: Call, ctx: RuleContext) -> Any:
    """``aten.lstm``/``gru``/``rnn_tanh``/``rnn_relu`` (and the modules, through adapters)."""
    x, hx = call.args["input"], call.args["hx"]
    params = [_param(ctx, p) for p in call.args["params"]]
    layers, dirs = int(call.args["num_layers"]), 2 if call.args["bidirectional"] else 1
    gates = _GATES[call.name]
    if not isinstance(x, TensorValue) or x.ndim not in (2, 3):
        return ctx.block(call, "a packed sequence input")
    if not all(isinstance(p, TensorValue) and p.param for p in params) or len(params) % (
        layers * dirs
    ):
        return ctx.block(call, "recurrent weights that are not parameters")
    per = len(params) // (layers * dirs)
    biased = bool(call.args["has_biases"])
    projected = per == (4 if biased else 2) + 1
    if per != (4 if biased else 2) + projected:
        return ctx.block(call, f"{per} tensors per layer and direction")
    first = params[:per]
    size_h, size_p = first[1].shape[0] // gates, first[1].shape[1]
    where = owner(first[0])
    hidden = _units(ctx, size_h, f"{where}:hidden")
    proj = _units(ctx, size_p, f"{where}:proj") if projected else hidden
    layer_out = prod([Fixed(dirs), proj])  # [forward | backward] of one layer
    for i in range(layers * dirs):
        w_ih, w_hh, *rest = params[i * per : (i + 1) * per]
        for p in (w_ih, w_hh, *rest[: 2 if biased else 0]):
            _gate_rows(ctx, p, gates, hidden, call)
        _reads(ctx, w_ih, x.terms[-1] if i < dirs else layer_out, call)
        _reads(ctx, w_hh, proj, call)
        if projected:
            w_hr = rest[-1]
            _gate_rows(ctx, w_hr, 1, proj, call)
            _reads(ctx, w_hr, hidden, call)
    states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    for h, node, units in zip(states, _hx_nodes(call, len(states)), (proj, hidden)):
        _state_in(ctx, h, node, units, call)
    mod = module_at(ctx, call.module if call.module_obj is not None else where, nn.RNNBase)
    xt = list(x.terms)
    ctx.set_attr(mod, "input_size", lambda size: size(xt[-1]))
    ctx.set_attr(mod, "hidden_size", lambda size: size(hidden))
    if projected:
        ctx.set_attr(mod, "proj_size", lambda size: size(proj))
    lead: list[Term] = [Fixed(layers * dirs)]
    if x.ndim == 3:  # a module call may be unbatched: (time, features)
        lead.append(xt[0] if call.args["batch_first"] else xt[1])
    out = call.out
    metas = [out[0], *out[1]] if isinstance(out[1], (list, tuple)) else list(out)
    output = TensorValue([*xt[:-1], layer_out], metas[0].shape)
    final = [
        TensorValue([*lead, units], meta.shape) for meta, units in zip(metas[1:], (proj, hidden))
    ]
    if len(out) == len(metas):  # aten: (output, h_n[, c_n])
        return (output, *final)
    return (output, tuple(final))  # the module: (output, (h_n, c_n))


for _name in _GATES:
    rules.rule(
        _name,
        signature="input, hx, params, has_biases, num_layers, dropout, train, bidirectional, "
        "batch_first",
    )(recurrent)


def recurrent_cell(call: Call, ctx: RuleContext) -> Any:
    """One step of the same recurrence: ``aten.lstm_cell``/``gru_cell``/``rnn_*_cell``."""
    x, hx = call.args["input"], call.args["hx"]
    w_ih, w_hh = call.args["w_ih"], call.args["w_hh"]
    gates = _GATES[call.name.removesuffix("_cell")]
    if not isinstance(x, TensorValue) or x.ndim not in (1, 2):
        return ctx.block(call, "an input that is not (batch, features)")
    where = owner(w_ih)
    hidden = _units(ctx, w_hh.shape[0] // gates, f"{where}:hidden")
    for p in (w_ih, w_hh, call.args["b_ih"], call.args["b_hh"]):
        _gate_rows(ctx, p, gates, hidden, call)
    _reads(ctx, w_ih, x.terms[-1], call)
    _reads(ctx, w_hh, hidden, call)
    states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    for h, node in zip(states, _hx_nodes(call, len(states))):
        _state_in(ctx, h, node, hidden, call)
    mod = module_at(ctx, call.module if call.module_obj is not None else where, nn.RNNCellBase)
    xt = list(x.terms)
    ctx.set_attr(mod, "input_size", lambda size: size(xt[-1]))
    ctx.set_attr(mod, "hidden_size", lambda size: size(hidden))
    out = call.out
    if isinstance(out, (list, tuple)):  # LSTM: (h', c')
        return tuple(TensorValue([*xt[:-1], hidden], meta.shape) for meta in out)
    return TensorValue([*xt[:-1], hidden], out.shape)


for _name in _GATES:
    rules.rule(f"{_name}_cell", signature="input, hx, w_ih, w_hh, b_ih=None, b_hh=None")(
        recurrent_cell
    )


# -- module calls in an fx trace ----------------------------------------------------------------
_MODES = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


@rules.module(nn.RNN, nn.GRU, nn.LSTM)
def _recurrent_module(m: nn.RNNBase, name: str, args: tuple, kwargs: dict):
    bound = dict(zip(("input", "hx"), args))
    bound.update(kwargs)
    canonical = _MODES.get(m.mode, f"recurrent mode {m.mode}")
    return canonical, {
        "input": bound.get("input"),
        "hx": bound.get("hx"),
        "params": [ParamRef(f"{name}.{w}") for w in m._flat_weights_names],
        "has_biases": m.bias,
        "num_layers": m.num_layers,
        "dropout": m.dropout,
        "train": False,
        "bidirectional": m.bidirectional,
        "batch_first": m.batch_first,
    }


@rules.module(nn.RNNCell, nn.GRUCell, nn.LSTMCell)
def _cell_module(m: nn.RNNCellBase, name: str, args: tuple, kwargs: dict):
    bound = dict(zip(("input", "hx"), args))
    bound.update(kwargs)
    if isinstance(m, nn.LSTMCell):
        canonical = "lstm_cell"
    elif isinstance(m, nn.GRUCell):
        canonical = "gru_cell"
    else:
        canonical = f"rnn_{m.nonlinearity}_cell"
    biases = {k: ParamRef(f"{name}.{k}") if m.bias else None for k in ("bias_ih", "bias_hh")}
    return canonical, {
        "input": bound.get("input"),
        "hx": bound.get("hx"),
        "w_ih": ParamRef(f"{name}.weight_ih"),
        "w_hh": ParamRef(f"{name}.weight_hh"),
        "b_ih": biases["bias_ih"],
        "b_hh": biases["bias_hh"],
    }
