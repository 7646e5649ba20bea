"""The walk behind :func:`autogrow.graph.fill.fill_groups`: what each op does to filled units.

For every tensor axis of a candidate group the walk keeps what its filled units hold
(``stream``: the group's fill, the mean of the old units or zero; ``zero``; ``param``: a
parameter's axis whose fill its use decides) and the power of ``ρ`` its old units are scaled
by. Each known op maps these forward and records what the parameters it reads must get (an
:class:`AxisFill`) and which norm eps attributes take a power of ``ρ``; any other op touching a
candidate group makes that group unfillable (the walk never guesses).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..axes.terms import Atom
from ..rules.context import Analysis, tensor_values
from ..rules.elementwise import _ACTIVATION_MODULES
from ..rules.registry import Call, TensorValue, target_name

__all__ = ["AxisFill", "FillWalk"]

# Ops that pass every value through (eval mode): the fill and the scale survive them.
_IDENTITY = {
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "native_dropout", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16",
    "to", "_to_copy", "alias", "type", "type_as", "cpu", "cuda", "lift_fresh_copy",
    "stochastic_depth", "identity",
}  # fmt: skip
# f(0) = 0: zero-filled units stay zero (but f(ρ x) ≠ ρ f(x): only unscaled inputs).
_ZERO_KEEPING = {
    "relu", "relu6", "gelu", "silu", "tanh", "hardswish", "hardtanh", "leaky_relu", "elu",
    "selu", "celu", "mish", "softsign", "tanhshrink", "hardshrink", "softshrink", "sin", "erf",
    "sign", "abs", "neg", "square",
}  # fmt: skip
# Powers of a value without the group's axis (a variance): the scale's exponent follows.
_POWERS = {"rsqrt": -0.5, "sqrt": 0.5, "reciprocal": -1.0, "square": 2.0}
_COMPOSITE = "laid out inside a composite axis (heads × head_dim, groups × channels, a concat)"
# Ops that only move values around: an axis of the group keeps what it carries.
_LAYOUT = {
    "view", "reshape", "_unsafe_view", "_reshape_alias", "view_as", "reshape_as", "flatten",
    "unflatten", "permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis",
    "unsqueeze", "squeeze", "expand", "expand_as", "broadcast_to", "getitem", "select", "slice",
    "narrow", "cat", "concat", "concatenate", "stack", "chunk", "split", "split_with_sizes",
    "tensor_split", "unbind", "numpy_T", "index",
}  # fmt: skip


@dataclass(frozen=True)
class AxisFill:
    """How a parameter axis of a filled group grows: ``fill`` is what its filled units get
    (``"mean"`` of the old units, ``"zero"``, or ``"free"``: a copy of a random old unit, for
    axes whose filled units meet zeros), and the whole axis is multiplied by ``ρ ** power``."""

    fill: str
    power: float = 0.0


@dataclass
class _Axis:
    """What one tensor axis of a candidate group carries: ``state`` is ``"stream"`` (the
    group's fill), ``"zero"`` or ``"param"`` (a parameter's axis, not yet given a fill;
    ``origin`` names it)."""

    gid: int
    state: str
    origin: tuple[str, int] | None = None


@dataclass
class _Value:
    """A tensor: its axes in candidate groups (dim -> _Axis) and the power of each group's
    ``ρ`` its old units (or, without that axis, the whole value) are multiplied by."""

    axes: dict[int, _Axis] = field(default_factory=dict)
    scale: dict[int, float] = field(default_factory=dict)


class _Unfillable(Exception):
    pass


class FillWalk:
    """One walk over the graph for one fill kind (``"mean"`` or ``"zero"``)."""

    def __init__(
        self, analysis: Analysis, gids: set[int], kind: str, resolved: dict | None = None
    ) -> None:
        self.analysis, self.store, self.gids, self.kind = analysis, analysis.store, gids, kind
        # id(term) -> (term, its root atom's id or None, the atom ids inside it), and per
        # value and per call their resolved axes and tensors: the store does not change
        # during a walk, and resolving every axis of every value at every op was most of
        # the walk's time (ConvNeXt); shared by the walks of one analysis
        self.resolved: dict[Any, tuple] = {} if resolved is None else resolved
        self.values: dict[int, _Value] = {}  # id(TensorValue) -> what it carries
        self.bad: dict[int, tuple[int, str]] = {}  # group -> (node index, why it cannot fill)
        self.position = 0
        self.axes: dict[int, dict[tuple[str, int], AxisFill]] = {}
        self.eps: dict[int, list[tuple[str, str, float, float]]] = {}
        self.model = analysis.traced.model

    def check_every_axis(self) -> None:
        """A parameter axis in a group that no op gave a fill (an op the walk passed over)
        would be copied blindly: the group cannot fill."""
        self.position = len(self.analysis.calls)
        for name, info in self.analysis.params.items():
            for d, t in enumerate(info.terms):
                atom, _ = self.resolve(t)
                if atom is not None and atom in self.gids:
                    if (name, d) not in self.axes.get(atom, {}):
                        self.fail([atom], f"no op the walk knows uses {name} (axis {d})")

    def resolve(self, t: Any) -> tuple[int | None, tuple[int, ...]]:
        """``t``'s root atom id (None unless it resolves to one atom), and the atom ids
        inside it when it does not."""
        hit = self.resolved.get(id(t))
        if hit is None:
            r = self.store.resolve(t)
            if isinstance(r, Atom):
                hit = (t, r.id, ())
            else:
                hit = (t, None, tuple(a.id for a in self.store.leaf_atoms(r)))
            self.resolved[id(t)] = hit  # keeps t alive, so its id is not reused
        return hit[1], hit[2]

    # -- bookkeeping ---------------------------------------------------------------------------
    def fail(self, gids: Iterable[int], why: str) -> None:
        for g in gids:
            self.bad.setdefault(g, (self.position, why))

    def group_dims(self, v: TensorValue, call: Call) -> dict[int, int]:
        """dim -> group id for the axes of ``v`` that are a candidate group (plain atoms);
        a candidate inside a composite axis cannot fill."""
        key = ("value", id(v))
        hit = self.resolved.get(key)
        if hit is None:  # every axis resolved once per value (kept alive with it)
            hit = (v, [(d, *self.resolve(t)) for d, t in enumerate(v.terms)])
            self.resolved[key] = hit
        dims = {}
        for d, atom, atoms in hit[1]:
            if atom is not None:
                if atom in self.gids:
                    dims[d] = atom
                continue
            inside = [a for a in atoms if a in self.gids]
            if inside:
                self.fail(inside, f"{_COMPOSITE} at {call.where()}")
        return dims

    def value(self, v: TensorValue, call: Call) -> _Value:
        known = self.values.get(id(v))
        if known is not None:
            return known
        dims = self.group_dims(v, call)
        if v.param is not None:
            return _Value({d: _Axis(g, "param", (v.param, d)) for d, g in dims.items()})
        if dims:  # a tensor the walk did not produce (a constant): nothing known about it
            self.fail(dims.values(), f"a tensor of unknown origin at {call.where()}")
        return _Value()

    def set_axis(self, param: str, dim: int, gid: int, fill: AxisFill, call: Call) -> None:
        axes = self.axes.setdefault(gid, {})
        old = axes.get((param, dim))
        if old is None or old == fill:
            axes[(param, dim)] = fill
        elif old.power != fill.power:
            self.fail([gid], f"{param} is scaled two ways (again at {call.where()})")
        elif old.fill == "free":  # a free axis takes whatever another use needs
            axes[(param, dim)] = fill
        elif fill.fill != "free":
            self.fail([gid], f"{param} would need two fills (again at {call.where()})")

    def stream(self, a: _Axis, call: Call, power: float = 0.0) -> str:
        """The state of ``a`` where an op adds or copies it as it is: a parameter's axis there
        takes the group's fill."""
        if a.state == "param":
            assert a.origin is not None
            self.set_axis(*a.origin, a.gid, AxisFill(self.kind, power), call)
            return "stream"
        return a.state

    def is_zero(self, state: str) -> bool:
        return state == "zero" or (state == "stream" and self.kind == "zero")

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> None:
        for position, (node, call) in enumerate(self.analysis.calls.items()):
            self.position = position
            result = self.analysis.values.get(node)
            try:
                out = self.op(call, result)
            except _Unfillable as e:
                out = None
                involved = self.involved(call, result)
                self.fail(involved, f"{e} at {call.where()}")
            if out is not None:
                for v, val in zip(tensor_values(result), out):
                    self.values[id(v)] = val
            else:
                for v in tensor_values(result):
                    self.values.setdefault(id(v), _Value())

    def involved(self, call: Call, result: Any) -> set[int]:
        gids: set[int] = set()
        key = ("call", id(call))
        hit = self.resolved.get(key)
        if hit is None:
            hit = (call, tensor_values(call.args) + tensor_values(result))
            self.resolved[key] = hit
        for v in hit[1]:
            val = self.values.get(id(v))
            gids |= set(self.group_dims(v, call).values())
            if val is not None:
                gids |= {g for g, p in val.scale.items() if p}
        return gids

    def op(self, call: Call, result: Any) -> list[_Value] | None:
        """What the outputs carry (one per tensor of ``result``), or None when the op touches
        no candidate group; raises _Unfillable when it touches one in an unknown way."""
        if not self.involved(call, result) or not tensor_values(result):
            return None  # untouched, or an op without tensor outputs (a metadata assert)
        name = call.name
        if name in ("unary", "nary"):
            name = self.op_name(call)
        handler = _HANDLERS.get(name)
        if handler is None and name in _LAYOUT:
            handler = FillWalk.layout
        if handler is None:
            raise _Unfillable(f"{name} has no known effect on filled units")
        return handler(self, call, result)

    def op_name(self, call: Call) -> str:
        m = call.module_obj
        if m is not None:
            return _ACTIVATION_MODULES.get(type(m), type(m).__name__)
        return target_name(call.node.target) or call.name

    # -- ops -----------------------------------------------------------------------------------
    def linear(self, call: Call, result: Any) -> list[_Value]:
        x, w, b = call.args["input"], call.args["weight"], call.args.get("bias")
        channel = -1 if call.name == "linear" else (1 if x.ndim == w.ndim else 0)
        if call.name == "conv" and call.args.get("groups", 1) != 1:
            raise _Unfillable("a grouped convolution")
        return self.project(call, result, x, w, b, channel, w_out=0)

    def addmm(self, call: Call, result: Any) -> list[_Value]:
        """``bias + x @ weight`` (GPT-2's ``Conv1D``): a linear layer whose weight is stored
        (in, out), so its input axis is 0 and its output axis 1."""
        x, w, b = call.args["mat1"], call.args["mat2"], call.args.get("input")
        if call.args.get("alpha", 1) != 1 or call.args.get("beta", 1) != 1:
            raise _Unfillable("addmm with alpha or beta")
        if w.param is None or w.ndim != 2 or x.ndim != 2:
            raise _Unfillable("a product whose second operand is not a weight")
        if isinstance(b, TensorValue) and (b.param is None or b.ndim != 1):
            raise _Unfillable("addmm whose added term is not a bias")
        return self.project(call, result, x, w, b, -1, w_out=1)

    def matmul(self, call: Call, result: Any) -> list[_Value]:
        """``x @ weight`` or ``x @ weight.T`` (a linear layer written out, Falcon's): the
        bias, if any, is a separate ``add``."""
        x, w = call.args["input"], call.args["other"]
        if isinstance(w, TensorValue) and w.param is not None and w.ndim == 2:
            return self.project(call, result, x, w, None, -1, w_out=1)
        node = call.node.args[1] if len(call.node.args) > 1 else None
        if (
            isinstance(node, torch.fx.Node)
            and target_name(node.target) in ("t", "numpy_T", "transpose")
            and isinstance(node.args[0], torch.fx.Node)
        ):
            source = self.analysis.values.get(node.args[0])
            if isinstance(source, TensorValue) and source.param is not None and source.ndim == 2:
                return self.project(call, result, x, source, None, -1, w_out=0)
        raise _Unfillable("a product whose second operand is not a weight")

    def project(
        self, call: Call, result: Any, x: TensorValue, w: TensorValue, b: Any, channel: int,
        w_out: int,
    ) -> list[_Value]:  # fmt: skip
        """A layer that sums ``x``'s ``channel`` axis against ``w``'s input axis and writes
        ``w``'s ``w_out`` axis (plus bias ``b``) as the output's channel."""
        w_in = 1 - w_out
        xv = self.value(x, call)
        xd = x.dim(channel)
        out = _Value()
        a = xv.axes.get(xd)
        if any(p for g, p in xv.scale.items() if a is None or g != a.gid):
            raise _Unfillable("a scaled input")
        if a is not None:  # the input's filled units meet the weight's input axis
            power = -xv.scale.get(a.gid, 0.0)
            if a.state == "param":
                raise _Unfillable("a parameter as a layer's input")
            fill = "free" if self.is_zero(a.state) else "zero"
            self.set_axis(w.param, w_in, a.gid, AxisFill(fill, power), call)
        wd = self.group_dims(w, call)
        if w_out in wd:
            g = wd[w_out]
            self.set_axis(w.param, w_out, g, AxisFill(self.kind), call)
            if isinstance(b, TensorValue):
                self.set_axis(b.param, 0, g, AxisFill(self.kind), call)
        (res,) = tensor_values(result)
        for d, g in self.group_dims(res, call).items():
            if d == res.dim(channel):
                out.axes[d] = _Axis(g, "stream")
            else:  # a leading axis: passed through
                src = xv.axes.get(d)
                if src is None or src.gid != g:
                    raise _Unfillable("an axis the walk cannot follow")
                out.axes[d] = src
        return [out]

    def grouped_mm(self, call: Call, result: Any) -> list[_Value]:
        """One matmul per expert: as :meth:`linear`, with the weight a stack of matrices
        (``[experts, in, out]``, often a transposed parameter) whose axes the walk follows
        back to the parameter."""
        x, w = call.args["input"], call.args["weight"]
        if isinstance(call.args.get("bias"), TensorValue):
            raise _Unfillable("a grouped matmul with a bias")
        xv, wv = self.value(x, call), self.value(w, call)
        a = xv.axes.get(x.ndim - 1)
        if any(p for g, p in xv.scale.items() if a is None or g != a.gid):
            raise _Unfillable("a scaled input")
        if a is not None:  # the input's filled units meet every expert's input axis
            w_in = wv.axes.get(w.ndim - 2)
            if a.state == "param" or w_in is None or w_in.state != "param":
                raise _Unfillable("an expert weight the walk cannot follow")
            assert w_in.origin is not None
            fill = "free" if self.is_zero(a.state) else "zero"
            self.set_axis(*w_in.origin, a.gid, AxisFill(fill, -xv.scale.get(a.gid, 0.0)), call)
        w_out = wv.axes.get(w.ndim - 1)
        if w_out is not None:
            if w_out.state != "param" or w_out.origin is None:
                raise _Unfillable("an expert weight the walk cannot follow")
            self.set_axis(*w_out.origin, w_out.gid, AxisFill(self.kind), call)
        (res,) = tensor_values(result)
        out = _Value()
        for d, g in self.group_dims(res, call).items():
            src = _Axis(g, "stream") if d == res.ndim - 1 else xv.axes.get(d)
            if src is None or src.gid != g:
                raise _Unfillable("an axis the walk cannot follow")
            out.axes[d] = src
        return [out]

    def reduce_sum(self, call: Call, result: Any) -> list[_Value]:
        """A sum over axes outside the group (an expert's outputs summed per token) is linear:
        filled units keep their fill, old units their scale."""
        if target_name(call.node.target) not in ("sum", "nansum"):
            raise _Unfillable(f"{target_name(call.node.target)} of filled units")
        x = call.args["input"]
        xv = self.value(x, call)
        dim = call.args.get("dim")
        dims = range(x.ndim) if dim in (None, [], ()) else dim
        dims = [x.dim(int(d)) for d in (dims if isinstance(dims, (list, tuple, range)) else [dims])]
        if any(d in xv.axes for d in dims):
            raise _Unfillable("a sum over filled units")
        out = _Value(scale=dict(xv.scale))
        (res,) = tensor_values(result)
        self.follow_axes(res, [xv], out, call)
        return [out]

    def embedding(self, call: Call, result: Any) -> list[_Value]:
        w = call.args["weight"]
        (res,) = tensor_values(result)
        out = _Value()
        wd = self.group_dims(w, call)
        for d, g in self.group_dims(res, call).items():
            if d != res.ndim - 1 or wd.get(1) != g:
                raise _Unfillable("an embedding over an axis the walk cannot follow")
            self.set_axis(w.param, 1, g, AxisFill(self.kind), call)
            out.axes[d] = _Axis(g, "stream")
        return [out]

    def norm(self, call: Call, result: Any) -> list[_Value]:
        x = call.args["input"]
        k = len(call.args["normalized_shape"])
        rms = call.name == "rms_norm" or isinstance(call.module_obj, nn.RMSNorm)
        xv = self.value(x, call)
        normalized = [xv.axes.get(d) for d in range(x.ndim - k, x.ndim)]
        if len(normalized) != 1 or normalized[0] is None:
            raise _Unfillable("a norm over several axes")
        a = normalized[0]
        if xv.scale.get(a.gid, 0.0):
            raise _Unfillable("a norm of a scaled input")
        if a.state == "param" or (rms and not self.is_zero(a.state)):
            raise _Unfillable("an RMSNorm over mean-filled units")
        if not rms and (self.kind != "mean" or a.state != "stream"):
            raise _Unfillable("a LayerNorm over zero-filled units")
        w, b = call.args.get("weight"), call.args.get("bias")
        out = _Value({**xv.axes, x.ndim - 1: _Axis(a.gid, "zero")}, dict(xv.scale))
        if isinstance(w, TensorValue):
            self.set_axis(w.param, 0, a.gid, AxisFill("free", 0.5), call)
        else:
            out.scale[a.gid] = -0.5
        if isinstance(b, TensorValue):
            self.set_axis(b.param, 0, a.gid, AxisFill("zero"), call)
        self.norm_eps(call, a.gid, w)
        return [out]

    def norm_eps(self, call: Call, gid: int, w: Any) -> None:
        eps = call.args.get("eps")
        module = call.module if call.module_obj is not None else None
        if module is not None and "eps" not in call.args:  # a module call: its own eps
            eps = getattr(call.module_obj, "eps", None)
        if module is None and isinstance(w, TensorValue) and w.param:
            module = w.param.rpartition(".")[0]
        found = self.eps_attribute(module, eps)
        if found is None:
            raise _Unfillable(f"eps {eps!r} is not a module attribute autogrow could rescale")
        self.add_eps(gid, (*found, 1.0), call)

    def eps_attribute(self, module: str | None, value: Any) -> tuple[str, str, float] | None:
        """(module, attribute, value) of the float attribute that holds a norm's ``eps``."""
        if module is None:
            return None
        try:
            m = self.model.get_submodule(module)
        except AttributeError:
            return None
        if value is None and isinstance(m, nn.RMSNorm) and m.eps is None:
            p = next(m.parameters(), None)
            dtype = p.dtype if p is not None else torch.get_default_dtype()
            return module, "eps", torch.finfo(dtype).eps  # None: the dtype's eps in forward
        names = [
            k
            for k, v in vars(m).items()
            if not k.startswith("_") and type(v) is float and v == value
        ]
        return (module, names[0], float(value)) if len(names) == 1 else None

    def add_eps(self, gid: int, item: tuple[str, str, float, float], call: Call) -> None:
        items = self.eps.setdefault(gid, [])
        for m, attr, _, power in items:
            if (m, attr) == item[:2] and power != item[3]:
                raise _Unfillable(f"eps {m}.{attr} would need two values")
        if item not in items:
            items.append(item)

    def reduce_mean(self, call: Call, result: Any) -> list[_Value]:
        x = call.args["input"]
        xv = self.value(x, call)
        dim = call.args.get("dim")
        dims = range(x.ndim) if dim in (None, [], ()) else dim
        dims = [x.dim(int(d)) for d in (dims if isinstance(dims, (list, tuple, range)) else [dims])]
        out = _Value(scale=dict(xv.scale))
        for d in dims:
            a = xv.axes.get(d)
            if a is None:
                continue
            if a.state == "param":
                raise _Unfillable("a mean over a parameter")
            if not (self.kind == "mean" and a.state == "stream"):  # filled zeros: ρ times
                out.scale[a.gid] = out.scale.get(a.gid, 0.0) + 1.0
        (res,) = tensor_values(result)
        self.follow_axes(res, [xv], out, call)
        return [out]

    def unary(self, call: Call, result: Any) -> list[_Value]:
        name = self.op_name(call)
        x = call.args["input"]
        others = tensor_values(call.args.get("args", ())) + tensor_values(call.args.get("kwargs"))
        xv = self.value(x, call)
        if others and name not in ("to", "type_as"):
            raise _Unfillable(f"{name} with tensor arguments")
        res = tensor_values(result)
        if name in _IDENTITY:
            out = _Value(dict(xv.axes), dict(xv.scale))
        elif not xv.axes and name in _POWERS:
            out = _Value(scale={g: p * _POWERS[name] for g, p in xv.scale.items()})
        elif name in _ZERO_KEEPING and all(
            self.is_zero(a.state) and not xv.scale.get(a.gid) for a in xv.axes.values()
        ):
            out = _Value(dict(xv.axes), dict(xv.scale))
        else:
            raise _Unfillable(f"{name} of filled units")
        return [out for _ in res]

    def nary(self, call: Call, result: Any) -> list[_Value]:
        name = self.op_name(call)
        args = call.args["args"]
        (res,) = tensor_values(result)
        values = [a for a in args if isinstance(a, TensorValue)]
        if len(args) != 2 or tensor_values(call.args["kwargs"]):
            raise _Unfillable(f"{name} with these arguments")
        vals = [self.value(v, call) for v in values]
        if name in ("add", "sub"):
            return [self.add(call, res, args, values, vals)]
        if name in ("mul", "div", "true_divide"):
            return [self.mul(call, res, args, values, vals, divide=name != "mul")]
        if name == "pow" and isinstance(args[1], (int, float)) and args[1] > 0:
            (xv,) = vals
            if not all(self.is_zero(a.state) for a in xv.axes.values()):
                raise _Unfillable("a power of mean-filled units")
            return [_Value(dict(xv.axes), {g: p * args[1] for g, p in xv.scale.items()})]
        raise _Unfillable(f"{name} of filled units")

    def aligned(self, res: TensorValue, values: list[TensorValue], vals: list[_Value], d: int):
        """The operands' axes that broadcasting lines up with output axis ``d``."""
        found = []
        for v, val in zip(values, vals):
            e = d - (res.ndim - v.ndim)
            if e >= 0 and v.shape[e] != 1:
                found.append(val.axes.get(e))
        return found

    def add(self, call, res, args, values, vals) -> _Value:
        out = _Value()
        rdims = self.group_dims(res, call)
        literal = len(values) < len(args)  # x + c with a number c
        for g in set(rdims.values()) | {g for val in vals for g in val.scale}:
            powers = {val.scale.get(g, 0.0) for val in vals}
            if len(powers) > 1:
                raise _Unfillable("a sum of differently scaled values")
            p = powers.pop()
            if p and literal:
                if g in rdims.values():
                    raise _Unfillable("a constant added to scaled filled units")
                # A variance (or mean square) ρ^p times the old one plus eps: eps takes ρ^p.
                c = next(a for a in args if not isinstance(a, TensorValue))
                found = self.eps_attribute(self.innermost(call), c)
                if found is None:
                    raise _Unfillable(f"eps {c!r} is not a module attribute")
                self.add_eps(g, (*found, p), call)
            if p:
                out.scale[g] = p
        for d, g in rdims.items():
            axes = self.aligned(res, values, vals, d)
            if any(a is None for a in axes):
                raise _Unfillable("an axis the walk cannot follow")
            states = {self.stream(a, call, out.scale.get(g, 0.0)) for a in axes}
            if self.kind == "zero":  # the group's fill is zero: a stream and zeros add up
                states = {"stream" if s == "zero" else s for s in states}
            if len(states) != 1:
                raise _Unfillable("a sum of mean-filled and zero-filled units")
            state = states.pop()
            if len(axes) < len(args) and not (self.kind == "mean" and state == "stream"):
                raise _Unfillable("a value broadcast over filled units")
            out.axes[d] = _Axis(g, state)
        return out

    def innermost(self, call: Call) -> str | None:
        stack = call.node.meta.get("nn_module_stack") or {}
        paths = [str(p) for p, _ in stack.values()]
        return paths[-1] if paths else call.module

    def mul(self, call, res, args, values, vals, *, divide: bool) -> _Value:
        sign = -1.0 if divide else 1.0
        if divide and vals[-1].axes and values[-1] is args[1]:
            raise _Unfillable("a division by filled units")
        out = _Value()
        for s, f in ((v.scale, 1.0 if i == 0 else sign) for i, v in enumerate(vals)):
            for g, p in s.items():
                out.scale[g] = out.scale.get(g, 0.0) + f * p
        for d, g in self.group_dims(res, call).items():
            axes = [a for a in self.aligned(res, values, vals, d) if a is not None]
            params = [a for a in axes if a.state == "param"]
            others = [a for a in axes if a.state != "param"]
            if not others:
                raise _Unfillable("a product of parameters")
            if not any(self.is_zero(a.state) for a in others):
                if len(others) > 1 or params:  # (mean + u)(mean + v) is not a mean
                    raise _Unfillable("a product with mean-filled units")
                out.axes[d] = others[0]
                continue
            for p in params:  # a per-unit weight (an RMSNorm's): undoes the old units' scale
                assert p.origin is not None
                self.set_axis(*p.origin, g, AxisFill("free", -out.scale.get(g, 0.0)), call)
                out.scale.pop(g, None)
            out.axes[d] = _Axis(g, "zero")
        out.scale = {g: p for g, p in out.scale.items() if p}
        return out

    def layout(self, call: Call, result: Any) -> list[_Value]:
        ins = [self.value(v, call) for v in tensor_values(call.args)]
        outs = []
        for res in tensor_values(result):
            out = _Value()
            self.follow(res, ins, out, call)
            outs.append(out)
        return outs

    def follow(self, res: TensorValue, ins: list[_Value], out: _Value, call: Call) -> None:
        """Give ``res``'s group axes what the inputs' axes of the same group carry (they must
        agree: a concatenation of a stream and a parameter gives the parameter the fill)."""
        self.follow_axes(res, ins, out, call)
        for val in ins:
            for g, p in val.scale.items():
                if out.scale.setdefault(g, p) != p:
                    raise _Unfillable("differently scaled values meet")

    def follow_axes(self, res: TensorValue, ins: list[_Value], out: _Value, call: Call) -> None:
        for d, g in self.group_dims(res, call).items():
            axes = [a for val in ins for a in val.axes.values() if a.gid == g]
            if not axes:
                raise _Unfillable("an axis the walk cannot follow")
            states = {a.state for a in axes}
            if states == {"param"} and len(axes) == 1:
                out.axes[d] = axes[0]
                continue
            states = {self.stream(a, call) for a in axes}
            if len(states) != 1:
                raise _Unfillable("mean-filled and zero-filled units meet")
            out.axes[d] = _Axis(g, states.pop())


_HANDLERS = {
    "linear": FillWalk.linear,
    "conv": FillWalk.linear,
    "addmm": FillWalk.addmm,
    "matmul": FillWalk.matmul,
    "embedding": FillWalk.embedding,
    "layer_norm": FillWalk.norm,
    "rms_norm": FillWalk.norm,
    "mean": FillWalk.reduce_mean,
    "sum": FillWalk.reduce_sum,
    "grouped_mm": FillWalk.grouped_mm,
    "unary": FillWalk.unary,
    "nary": FillWalk.nary,
}
for _n in _IDENTITY | _ZERO_KEEPING | set(_POWERS) | {"exp", "log"}:
    _HANDLERS.setdefault(_n, FillWalk.unary)
for _n in ("add", "sub", "mul", "div", "true_divide", "pow"):
    _HANDLERS[_n] = FillWalk.nary
