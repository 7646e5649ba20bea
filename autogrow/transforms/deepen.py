"""Net2DeeperNet for any model: zeroed residual blocks, or identity layers, then verify.

Two constructions, both exact in eval mode (see ``docs/deepen.md``):

* **block**: in a stage (an ``nn.Sequential``/``nn.ModuleList`` of blocks), a deepcopy of a
  shape-preserving block whose residual branch outputs zero: the branch's *last* Linear/Conv
  weight and bias are zeroed (and a BatchNorm right after it gets bias 0 and running mean 0),
  so ``block(x) = x`` while every weight still receives gradient. The branch ends are found by
  trying candidates on the block's recorded input, last registered first, and keeping the
  smallest set that makes the copy an identity; a block for which none does is not used.
* **identity**: after a module, a stack ``[Linear/Conv = I, BatchNorm = I (if the model uses
  BatchNorm), activation]``, where the activation is a copy of the module itself when it is an
  idempotent activation (ReLU, ReLU6, Hardtanh) and ``PReLU(init=1)`` otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import nn

from ..adapters import ModelAdapter, adapter_for
from ..errors import InvalidArgumentError, UnsupportedOpError
from ..tracing import eval_mode, prepare_inputs
from ..verify import check_tolerance
from ..verify import verify as verify_outputs
from .identity import identity_batchnorm, identity_conv, identity_linear, identity_prelu
from .lineage import record_step
from .optimizer import check_optimizer, extend_optimizer
from .widen import chain_undo

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PARAMETRIC = (nn.Linear, *_CONV_TYPES)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_IDEMPOTENT = (nn.ReLU, nn.Hardtanh)  # nn.ReLU6 is a Hardtanh: f(f(x)) = f(x)
_BLOCK_TOL = 1e-6
_MAX_DENSE_KERNEL = 3  # identity convs after dense convs use at most 3x3 kernels


@dataclass(frozen=True)
class InsertionPoint:
    """A place where :func:`deepen` can add depth, and what it would insert there.

    Attributes:
        where: qualified module name (pass the point, or this name, as ``after=``).
        kind: ``"block"`` (a zeroed copy of a residual block) or ``"identity"`` (identity
            layers after the module).
        inserts: what would be inserted, in words.
        exact_in_train: whether the inserted layers are also the identity in train mode
            (False when a BatchNorm is inserted: it normalises with batch statistics).

    >>> print(InsertionPoint("fc1", "identity", "Linear(8, 8)=I, PReLU(8, init=1)", True))
    fc1  [identity]  Linear(8, 8)=I, PReLU(8, init=1)  (exact in train mode too)
    """

    where: str
    kind: str
    inserts: str
    exact_in_train: bool
    _zero: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        train = "exact in train mode too" if self.exact_in_train else "exact in eval mode"
        return f"{self.where or '<model>'}  [{self.kind}]  {self.inserts}  ({train})"


# --------------------------------------------------------------------------------------------
# recording one eval forward
# --------------------------------------------------------------------------------------------


@dataclass
class _Call:
    args: tuple
    kwargs: dict
    output: Any  # a clone for children of containers, else a meta tensor (shape and dtype)
    device: torch.device | None = None
    calls: int = 1
    shapes: set = field(default_factory=set)


class _Record:
    """Per-module first call (args, kwargs, output), call counts and leaf order.

    Only the children of Sequential/ModuleList containers (the candidate blocks) keep cloned
    values; every other module keeps its output's shape and dtype, so memory stays bounded.
    """

    def __init__(self, model: nn.Module, inputs: tuple) -> None:
        self.model = model
        self.adapter = adapter_for(model)
        self.calls: dict[str, _Call] = {}
        self.order: list[str] = []  # leaf modules, in the order their forward ended
        self.keep = {
            f"{name}.{key}" if name else key
            for name, m in model.named_modules()
            if _is_container(m)
            for key in m._modules
        }
        handles = []
        for name, m in model.named_modules():
            if name in self.keep:
                handles.append(m.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            handles.append(m.register_forward_hook(self._post(name), with_kwargs=True))
        self._pending: dict[str, tuple] = {}
        self.zero_sets: dict[str, tuple[str, ...] | None] = {}
        try:
            with eval_mode(model), torch.no_grad():
                self.output = model(*inputs)
        finally:
            for h in handles:
                h.remove()

    def _pre(self, name: str):
        def hook(module, args, kwargs):
            if name not in self.calls and name not in self._pending:
                self._pending[name] = (_clone(args), _clone(kwargs))

        return hook

    def _post(self, name: str):
        def hook(module, args, kwargs, output):
            is_tensor = isinstance(output, torch.Tensor)
            shape = tuple(output.shape) if is_tensor else None
            call = self.calls.get(name)
            if call is None:
                a, k = self._pending.pop(name, ((), {}))
                if name in self.keep:
                    value = _clone(output)
                elif is_tensor:
                    value = torch.empty(shape, dtype=output.dtype, device="meta")
                else:
                    value = None
                device = output.device if is_tensor else None
                call = self.calls[name] = _Call(a, k, value, device)
                if not any(True for _ in module.children()):
                    self.order.append(name)
            else:
                call.calls += 1
            call.shapes.add(shape)

        return hook


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------


def _parent(model: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    if not name:
        return None, ""
    parent, _, attr = name.rpartition(".")
    return model.get_submodule(parent), attr


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList))


def _plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _block_candidate(model: nn.Module, name: str, rec: _Record) -> bool:
    """A non-leaf child of a Sequential/ModuleList, called once, mapping x to x's shape."""
    parent, _ = _parent(model, name)
    module = model.get_submodule(name)
    call = rec.calls.get(name)
    if parent is None or not _is_container(parent) or call is None or call.calls != 1:
        return False
    if _plain_sequential(module) or isinstance(module, nn.ModuleList):
        return False
    if not any(True for _ in module.children()) or not any(True for _ in module.parameters()):
        return False
    x = call.args[0] if call.args else None
    y = _hidden(call.output)
    return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape


def _hidden(output: Any) -> Any:
    """A block's output, or the first element of a tuple (transformers layers return
    ``(hidden_states, ...)``)."""
    if isinstance(output, tuple) and output and not hasattr(output, "_fields"):
        return output[0]
    return output


def _zero_branch(block: nn.Module, names: Sequence[str], adapter: ModelAdapter) -> None:
    """Zero each named Linear/Conv (weight and bias) and the bias/mean of a norm right after."""
    modules = list(block.named_modules())
    index = {n: i for i, (n, _) in enumerate(modules)}
    with torch.no_grad():
        for name in names:
            m = block.get_submodule(name)
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()
            width = _out_width(m, adapter)
            for _, nxt in modules[index[name] + 1 :]:
                if any(True for _ in nxt.children()):
                    continue
                if isinstance(nxt, _NORMS) and _norm_width(nxt) == width:
                    if getattr(nxt, "bias", None) is not None:
                        nxt.bias.zero_()
                    if getattr(nxt, "running_mean", None) is not None:
                        nxt.running_mean.zero_()
                break


def _is_branch_end(m: nn.Module, adapter: ModelAdapter) -> bool:
    """A Linear/Conv, or a library's own linear layer (its adapter says)."""
    return isinstance(m, _PARAMETRIC) or adapter.linear_width(m) is not None


def _out_width(m: nn.Module, adapter: ModelAdapter) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    width = adapter.linear_width(m)
    return width if width is not None else m.out_channels  # type: ignore[return-value]


def _norm_width(m: nn.Module) -> int:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.LayerNorm):
        return m.normalized_shape[-1]
    return m.num_features  # type: ignore[return-value]


def _identity_error(
    block: nn.Module, zero: Sequence[str], call: _Call, adapter: ModelAdapter
) -> float:
    trial = copy.deepcopy(block)
    _zero_branch(trial, zero, adapter)
    y = _hidden(call.output)
    try:
        with eval_mode(trial), torch.no_grad():
            out = trial(y, *call.args[1:], **call.kwargs)
    except Exception:  # noqa: BLE001 - a block that cannot take its own output is not usable
        return float("inf")
    if isinstance(call.output, tuple) and isinstance(out, tuple) and len(out) == len(call.output):
        # the other outputs (a position bias passed along) must come out unchanged too
        if any(_differs(a, b) for a, b in zip(out[1:], call.output[1:])):
            return float("inf")
    out = _hidden(out)
    if not isinstance(out, torch.Tensor) or out.shape != y.shape:
        return float("inf")
    scale = y.abs().max().item()
    diff = (out.double() - y.double()).abs().max().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape != b.shape or not torch.equal(a, b)
    return type(a) is not type(b)


def _find_zero_set(block: nn.Module, call: _Call, adapter: ModelAdapter) -> tuple[str, ...] | None:
    """The branch-ending Linear/Convs whose zeroing makes ``block`` the identity, or None."""
    candidates = [n for n, m in block.named_modules() if _is_branch_end(m, adapter)]
    chosen: list[str] = []
    current = _identity_error(block, chosen, call, adapter)
    improved = True
    while improved and current > _BLOCK_TOL:  # again: one zeroing can help only after another
        improved = False
        for name in reversed(candidates):
            if current <= _BLOCK_TOL:
                break
            if name in chosen:
                continue
            err = _identity_error(block, [*chosen, name], call, adapter)
            if err < current * (1 - 1e-3):
                chosen.append(name)
                current, improved = err, True
    if current > _BLOCK_TOL:
        return None
    if not chosen:  # already the identity (a zeroed copy, zero_init_residual): copy as is
        return ()
    for name in sorted(chosen, key=candidates.index):  # drop redundant (earlier) zeroings
        rest = [c for c in chosen if c != name]
        if rest and _identity_error(block, rest, call, adapter) <= _BLOCK_TOL:
            chosen = rest
    return tuple(sorted(chosen, key=candidates.index))


def _block_point(
    model: nn.Module, name: str, rec: _Record, *, outermost: bool = False
) -> InsertionPoint | None:
    """``outermost``: a layer of a library's layer stack is a block even though it holds
    residual blocks (its attention and MLP sublayers), because the library counts layers."""
    if outermost and _block_candidate(model, name, rec):
        zero = _find_zero_set(model.get_submodule(name), rec.calls[name], rec.adapter)
    else:
        zero = _zero_set(model, name, rec)
    if zero is None:
        return None
    block = model.get_submodule(name)
    parent, attr = _parent(model, name)
    last = list(parent._modules)[-1] == attr  # type: ignore[union-attr]
    where = name.rpartition(".")[0] if last else name
    zeroed = f"{', '.join(zero)} zeroed" if zero else "its branch already zero"
    what = f"a copy of {name} ({type(block).__name__}) with {zeroed}"
    return InsertionPoint(where, "block", what, True, zero)


def _zero_set(model: nn.Module, name: str, rec: _Record) -> tuple[str, ...] | None:
    """The zeroings that make block ``name`` the identity; None for a non-block.

    A module holding a residual block itself (a whole encoder, a stage wrapper) is not a
    block: depth goes into its innermost residual blocks.
    """
    if name not in rec.zero_sets:
        result = None
        if _block_candidate(model, name, rec):
            prefix = f"{name}."
            inner = sorted(d for d in rec.keep if d.startswith(prefix))
            if all(_zero_set(model, d, rec) is None for d in inner):
                result = _find_zero_set(model.get_submodule(name), rec.calls[name], rec.adapter)
        rec.zero_sets[name] = result
    return rec.zero_sets[name]


def _run_ends(model: nn.Module, rec: _Record) -> list[str]:
    """Block candidates that end a run of same-type, shape-preserving siblings."""
    ends = []
    for cname, container in model.named_modules():
        if not _is_container(container):
            continue
        keys = list(container._modules)
        for i, key in enumerate(keys):
            name = f"{cname}.{key}" if cname else key
            if not _block_candidate(model, name, rec):
                continue
            nxt = None
            if i + 1 < len(keys):
                nxt = f"{cname}.{keys[i + 1]}" if cname else keys[i + 1]
            same_next = (
                nxt is not None
                and type(model.get_submodule(nxt)) is type(container[i])
                and _block_candidate(model, nxt, rec)
            )
            if not same_next:
                ends.append(name)
    return ends


# --------------------------------------------------------------------------------------------
# identity stacks
# --------------------------------------------------------------------------------------------


def _last_leaf(module: nn.Module) -> nn.Module:
    while _plain_sequential(module) and len(module) > 0:
        module = module[-1]
    return module


def _identity_point(model: nn.Module, name: str, rec: _Record) -> InsertionPoint | None:
    try:
        return _identity_plan(model, name, rec)[0]
    except UnsupportedOpError:
        return None


def _identity_plan(model: nn.Module, name: str, rec: _Record) -> tuple[InsertionPoint, Any]:
    """(point, factory) for identity layers after module ``name``; factory() builds a stack."""
    module = model.get_submodule(name)
    call = rec.calls.get(name)
    label = name or "<model>"
    if call is None:
        raise InvalidArgumentError(
            f"module {label!r} ({type(module).__name__}) is not called by forward on the example "
            "inputs, so nothing can be inserted after it; name a module that runs "
            "(see autogrow.insertion_points(model))"
        )
    y = call.output
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.ndim < 2:
        raise UnsupportedOpError(
            f"module {label!r} ({type(module).__name__}) returns "
            f"{type(y).__name__ if not isinstance(y, torch.Tensor) else f'a {y.ndim}-d tensor'}"
            ", not a floating (batch, features...) tensor, so identity layers cannot follow it; "
            "name a Linear, Conv or activation module instead"
        )
    feature_shapes = {(len(s), s[1], s[-1]) for s in call.shapes if s is not None}
    if len(feature_shapes) > 1 or None in call.shapes:
        raise UnsupportedOpError(
            f"module {label!r} ({type(module).__name__}) is called {call.calls} times with "
            "outputs of different shapes, and an inserted layer would see all of them; name a "
            "module that is called once"
        )
    kind, dims, source = _layout(module, name, y, rec)
    channels = y.shape[-1] if kind == "linear" else y.shape[1]
    uses_bn = any(isinstance(m, _bn_type(kind, dims, y)) for m in model.modules())
    last = _last_leaf(module)
    idempotent = isinstance(last, _IDEMPOTENT)
    dtype, device = y.dtype, call.device
    per_channel = kind == "conv" or y.ndim == 2

    def factory() -> list[nn.Module]:
        layers: list[nn.Module] = []
        if kind == "linear":
            layers.append(identity_linear(channels, dtype=dtype, device=device))
        else:
            depthwise = (
                isinstance(source, _CONV_TYPES)
                and source.groups > 1
                and source.groups == source.in_channels
            )
            ks = source.kernel_size if isinstance(source, _CONV_TYPES) else 1
            if not depthwise:
                ks = tuple(min(k, _MAX_DENSE_KERNEL) for k in ks) if isinstance(ks, tuple) else 1
            layers.append(
                identity_conv(channels, dims, ks, depthwise=depthwise, dtype=dtype, device=device)
            )
        if uses_bn:
            layers.append(identity_batchnorm(channels, max(dims, 1), dtype=dtype, device=device))
        if idempotent:
            layers.append(copy.deepcopy(last))
        else:
            layers.append(
                identity_prelu(channels if per_channel else 1, dtype=dtype, device=device)
            )
        return layers

    words = ", ".join(_describe(m) for m in factory())
    return InsertionPoint(name, "identity", words, not uses_bn), factory


def _bn_type(kind: str, dims: int, y: torch.Tensor) -> tuple[type, ...]:
    if kind == "conv":
        return ({1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims],)
    return (nn.BatchNorm1d,) if y.ndim == 2 else ()


def _layout(module: nn.Module, name: str, y: torch.Tensor, rec: _Record):
    """("linear" | "conv", spatial dims, the Linear/Conv that produced the features)."""
    if isinstance(module, nn.Linear):
        return "linear", 0, module
    if isinstance(module, _CONV_TYPES):
        return "conv", y.ndim - 2, module
    # the last Linear/Conv that ran before this module ended, if its width matches
    end = _end_index(name, rec)
    for leaf in reversed(rec.order[:end]):
        m = rec.model.get_submodule(leaf)
        if isinstance(m, nn.Linear) and y.shape[-1] == m.out_features:
            return "linear", 0, m
        if isinstance(m, _CONV_TYPES) and y.ndim == m.weight.ndim and y.shape[1] == m.out_channels:
            return "conv", y.ndim - 2, m
        if isinstance(m, _PARAMETRIC):
            break
    if 3 <= y.ndim <= 5 and any(isinstance(m, _CONV_TYPES) for m in rec.model.modules()):
        return "conv", y.ndim - 2, None
    return "linear", 0, None


def _end_index(name: str, rec: _Record) -> int:
    prefix = f"{name}." if name else ""
    last = -1
    for i, leaf in enumerate(rec.order):
        if leaf == name or leaf.startswith(prefix):
            last = i
    return last + 1


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}, {m.out_features})=I"
    if isinstance(m, _CONV_TYPES):
        k = "x".join(map(str, m.kernel_size))
        dw = ", depthwise" if m.groups > 1 else ""
        return f"{type(m).__name__}({m.in_channels}, {m.out_channels}, {k}{dw})=I"
    if isinstance(m, nn.PReLU):
        return f"PReLU({m.num_parameters}, init=1)"
    if isinstance(m, _NORMS):
        return f"{type(m).__name__}({_norm_width(m)})=I(eval)"
    return type(m).__name__


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def insertion_points(
    model: nn.Module, example_inputs: tuple[Any, ...] | None = None
) -> list[InsertionPoint]:
    """Every place where :func:`deepen` can add depth, and what it would insert there.

    Residual blocks (children of a Sequential/ModuleList that become the identity when their
    branch's last Linear/Conv is zeroed) give ``"block"`` points, named after their stage when
    they are its last block; every Linear, Conv, norm and activation module that runs once (or
    always with the same width) gives an ``"identity"`` point. The model runs once, in eval mode.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> for p in autogrow.insertion_points(net):
    ...     print(p)
    0  [identity]  Linear(8, 8)=I, PReLU(8, init=1)  (exact in train mode too)
    1  [identity]  Linear(8, 8)=I, ReLU  (exact in train mode too)
    2  [identity]  Linear(2, 2)=I, PReLU(2, init=1)  (exact in train mode too)
    """
    inputs = prepare_inputs(model, example_inputs)
    rec = _Record(model, inputs)
    points: list[InsertionPoint] = []
    for name, m in model.named_modules():
        if name and _block_candidate(model, name, rec):
            p = _block_point(model, name, rec)
            if p is not None:
                points.append(p)
        elif name and name in rec.order and not isinstance(m, (nn.Dropout, nn.Identity)):
            p = _identity_point(model, name, rec)
            if p is not None:
                points.append(p)
    return points


After = str | InsertionPoint | Sequence[str | InsertionPoint] | None


@overload
def deepen(
    model: nn.Module,
    *,
    after: After = ...,
    n: int = ...,
    example_inputs: tuple[Any, ...] | None = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    optimizer: None = ...,
) -> nn.Module: ...


@overload
def deepen(
    model: nn.Module,
    *,
    after: After = ...,
    n: int = ...,
    example_inputs: tuple[Any, ...] | None = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    optimizer: torch.optim.Optimizer,
) -> tuple[nn.Module, torch.optim.Optimizer]: ...


def deepen(
    model: nn.Module,
    *,
    after: After = None,
    n: int = 1,
    example_inputs: tuple[Any, ...] | None = None,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module | tuple[nn.Module, torch.optim.Optimizer]:
    """Return a deeper model of the same class that computes the same function (Net2DeeperNet).

    Args:
        model: any ``nn.Module``; it is never modified unless ``inplace=True``.
        after: where to add depth (a name, an :class:`InsertionPoint`, or a list of them):

            * a stage (``nn.Sequential``/``nn.ModuleList``) whose last child is a residual
              block: ``n`` zeroed copies of that block are appended;
            * a residual block inside a stage: ``n`` zeroed copies are inserted after it;
            * any other module: ``n`` identity stacks are inserted after it (into its parent
              if that is an ``nn.Sequential``, otherwise the module is replaced by
              ``nn.Sequential(module, *new)``: its state_dict keys gain a ``.0``);
            * ``None``: ``n`` new blocks at the end of every run of residual blocks; for models
              without any, ``n`` identity stacks after the last hidden layer (the last
              activation module before the output layer, else the last module before it).
        n: how many blocks / identity stacks to insert at each place (an int >= 1).
        example_inputs: positional inputs for the recording forward and verification;
            inferred from the first Conv/Linear/Embedding when omitted.
        inplace: modify and return ``model`` itself (restored if verification fails).
        verify: compare outputs in eval mode and raise VerificationError beyond the tolerance.
        tolerance: the max relative error ``verify`` accepts; None: set by the model's dtype,
            1e-4 in float32, 8 × eps in float16/bfloat16 (``autogrow.verify.default_tolerance``).
        optimizer: a ``torch.optim.SGD``/``Adam``/``AdamW`` over ``model``'s parameters;
            deepen then returns ``(model, new_optimizer)``: the old layers keep their state
            (cloned), the new layers join the param group of the layer they follow, without
            state (see :func:`autogrow.transforms.optimizer.extend_optimizer`). The given
            optimizer is left untouched, also with ``inplace=True``.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> deep = autogrow.deepen(net)
    >>> deep
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=8, bias=True)
      (3): ReLU()
      (4): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"n must be an int >= 1 (layers or blocks per place), got {n!r}")
    targets = _normalise_after(after)
    check_tolerance(tolerance)
    inputs = prepare_inputs(model, example_inputs)
    rec = _Record(model, inputs)
    plans = _default_plans(model, rec) if targets is None else _plans(model, rec, targets)
    if optimizer is not None:
        check_optimizer(optimizer, model)  # before anything is changed
    adapter = adapter_for(model)
    stacks = adapter.layer_stacks(model)
    old_params = list(model.parameters())  # before an in-place change adds the new layers
    memo: dict[int, Any] = {}
    result = model if inplace else copy.deepcopy(model, memo)
    undo = _apply(result, plans, n)
    inserted = [(p.container, p.index, n) for p in plans if p.point.kind == "block"]
    undo = chain_undo(adapter.after_deepen(result, stacks, inserted), undo)
    if verify:
        try:
            verify_outputs(result, inputs, rec.output, what="deepened", tolerance=tolerance)
        except Exception:
            undo()
            raise
    # The resolved places (not ``after``): the default placement looks at the model's values.
    after_arg = [[p.point.where, p.point.kind] for p in plans]
    record_step(model, result, "deepen", {"after": after_arg, "n": n}, inputs)
    if optimizer is not None:
        copies = {id(p): memo.get(id(p), p) for p in old_params}
        return result, extend_optimizer(optimizer, model, result, copies)
    return result


def _normalise_after(after: Any) -> list[str | InsertionPoint] | None:
    if after is None:
        return None
    items = [after] if isinstance(after, (str, InsertionPoint)) else after
    try:
        items = list(items)
    except TypeError:
        items = [after]
    for item in items:
        if not isinstance(item, (str, InsertionPoint)):
            raise InvalidArgumentError(
                "after must be a module name, an InsertionPoint, a list of them or None; got "
                f"{type(item).__name__} {item!r}"
            )
    if not items:
        raise InvalidArgumentError("after is an empty list: name at least one module")
    names = [i.where if isinstance(i, InsertionPoint) else i for i in items]
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise InvalidArgumentError(f"after names {dupes} more than once; use n= for more layers")
    return items


@dataclass
class _Plan:
    point: InsertionPoint
    container: str  # where the new modules go (Sequential/ModuleList), or the module to wrap
    index: int | None  # insert position in container; None: wrap ``container``
    factory: Any  # () -> list[nn.Module], built on the result model


def _plans(model: nn.Module, rec: _Record, targets: list) -> list[_Plan]:
    plans = []
    for t in targets:
        name = t.where if isinstance(t, InsertionPoint) else t
        kind = t.kind if isinstance(t, InsertionPoint) else None
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise InvalidArgumentError(
                f"after={name!r}: {type(model).__name__} has no submodule {name!r}; "
                "see autogrow.insertion_points(model) for the places that can be deepened"
            ) from None
        if kind not in (None, "block", "identity"):
            raise InvalidArgumentError(f"InsertionPoint kind must be block or identity: {kind!r}")
        plans.append(_plan_for(model, rec, name, module, kind))
    return plans


def _plan_for(model: nn.Module, rec: _Record, name: str, module: nn.Module, kind) -> _Plan:
    label = name or "<model>"
    if kind != "identity":
        block_name = None
        if _is_container(module) and len(module) > 0:
            block_name = (
                f"{name}.{list(module._modules)[-1]}" if name else list(module._modules)[-1]
            )
        elif name and _block_candidate(model, name, rec):
            block_name = name
        if block_name is not None:
            stacks = rec.adapter.layer_stacks(model)
            outermost = name in stacks or name.rpartition(".")[0] in stacks
            point = _block_point(model, block_name, rec, outermost=outermost)
            if point is not None:
                return _block_plan(model, block_name, point)
        if kind == "block":
            raise UnsupportedOpError(
                f"{label!r} is not a residual block (or a stage ending in one): zeroing its "
                "last Linear/Conv does not make it the identity on the example inputs; use "
                "kind='identity' or name another module (see autogrow.insertion_points(model))"
            )
    if isinstance(module, nn.ModuleList):
        raise UnsupportedOpError(
            f"{label!r} is an nn.ModuleList whose last entry is not a residual block, and the "
            "model's own loop decides how its entries are called; name a module inside it"
        )
    if _is_container(module) and type(module).forward is nn.Sequential.forward and len(module):
        # append identity layers at the end of a plain Sequential
        last = f"{name}.{list(module._modules)[-1]}" if name else list(module._modules)[-1]
        point, factory = _identity_plan(model, last, rec)
        point = InsertionPoint(name, "identity", point.inserts, point.exact_in_train)
        return _Plan(point, name, len(module), factory)
    if not name:
        raise InvalidArgumentError(
            f"after names the whole model ({type(model).__name__}), which cannot be wrapped "
            "without changing its class; name a submodule"
        )
    point, factory = _identity_plan(model, name, rec)
    parent, attr = _parent(model, name)
    if _plain_sequential(parent):
        parent_name = name.rpartition(".")[0]
        return _Plan(point, parent_name, list(parent._modules).index(attr) + 1, factory)
    return _Plan(point, name, None, factory)


def _block_plan(model: nn.Module, block_name: str, point: InsertionPoint) -> _Plan:
    parent_name, _, attr = block_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    index = list(parent._modules).index(attr) + 1

    def factory_for(result: nn.Module):
        def factory() -> list[nn.Module]:
            new = copy.deepcopy(result.get_submodule(block_name))
            _zero_branch(new, point._zero, adapter_for(result))
            return [new]

        return factory

    return _Plan(point, parent_name, index, factory_for)


def _default_plans(model: nn.Module, rec: _Record) -> list[_Plan]:
    plans = []
    stacks = rec.adapter.layer_stacks(model)
    for stack in stacks:  # a library's layer stacks (its config counts them): after the last
        last = f"{stack}.{len(model.get_submodule(stack)) - 1}"
        point = _block_point(model, last, rec, outermost=True)
        if point is not None:
            plans.append(_block_plan(model, last, point))
    if plans:
        return plans
    if stacks:  # identity layers elsewhere would leave a model its config cannot describe
        raise UnsupportedOpError(
            f"no layer of {type(model).__name__}'s {', '.join(stacks)} becomes the identity when "
            "its output projections are zeroed, so a copied layer would change the function. "
            "This is the case for post-LayerNorm layers (LayerNorm(x + f(x))) "
            "whose LayerNorm weights are no longer 1 and biases 0. Pass after=... to insert "
            "identity layers instead (the config will not describe them)."
        )
    for name in _run_ends(model, rec):
        point = _block_point(model, name, rec)
        if point is not None:
            plans.append(_block_plan(model, name, point))
    if plans:
        return plans
    hidden = _last_hidden(model, rec)
    return [_plan_for(model, rec, hidden, model.get_submodule(hidden), "identity")]


def _last_hidden(model: nn.Module, rec: _Record) -> str:
    order = [o for o in rec.order if o in rec.calls]
    heads = [i for i, o in enumerate(order) if isinstance(model.get_submodule(o), _PARAMETRIC)]
    if len(heads) < 2:
        raise UnsupportedOpError(
            f"{type(model).__name__} has no hidden Linear/Conv layer before its output layer and "
            "no residual blocks, so there is no default place to add depth; pass after=..."
        )
    head = heads[-1]
    previous = max(i for i, o in enumerate(order[:head]) if _is_hidden_parametric(model, o))
    window = order[previous:head]
    usable = [o for o in window if _identity_point(model, o, rec) is not None]
    for o in reversed(usable):
        if _is_activation(model.get_submodule(o)):
            return _in_sequential(model, o, rec)
    if usable:
        return _in_sequential(model, usable[-1], rec)
    raise UnsupportedOpError(
        f"found no module before {order[head]!r} after which identity layers fit; pass after=..."
    )


def _in_sequential(model: nn.Module, leaf: str, rec: _Record) -> str:
    """``leaf``, or the innermost ancestor ending with it whose parent is a plain Sequential.

    Inserting into a Sequential keeps the module tree readable and never wraps a module that
    forward code may read attributes of (``self.norm1.eps``).
    """
    name, end = leaf, _end_index(leaf, rec)
    while name:
        parent, _ = _parent(model, name)
        call = rec.calls.get(name)
        if (
            _plain_sequential(parent)
            and call is not None
            and call.calls == 1
            and _identity_point(model, name, rec) is not None
        ):
            return name
        name = name.rpartition(".")[0]
        if not name or _end_index(name, rec) != end:
            break
    return leaf


def _is_hidden_parametric(model: nn.Module, name: str) -> bool:
    return isinstance(model.get_submodule(name), (*_PARAMETRIC, *_NORMS))


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn.modules.activation")


def _insert(container: nn.Module, index: int, module: nn.Module) -> None:
    """Insert ``module`` at ``index`` of a Sequential or ModuleList, keeping named children.

    ``Sequential.insert`` renumbers children as ``"0", "1", ...`` and fails on a Sequential built
    from an OrderedDict; there new layers are named ``grown0``, ``grown1``, ... (first unused).
    """
    names = list(container._modules)
    if names == [str(i) for i in range(len(names))]:
        container.insert(index, module)  # type: ignore[operator]
        return
    k = 0
    while f"grown{k}" in container._modules:
        k += 1
    name = f"grown{k}"
    items = list(container._modules.items())
    items.insert(index, (name, module))
    container._modules.clear()
    container._modules.update(items)


def _apply(result: nn.Module, plans: list[_Plan], n: int):
    """Insert every plan's modules into ``result``; returns an undo function."""
    saved: dict[int, tuple[nn.Module, dict]] = {}

    def save(m: nn.Module) -> None:
        saved.setdefault(id(m), (m, dict(m._modules)))

    # Build on the result's modules first (blocks copy the result's own block), then insert
    # deepest names first and, in one container, from the highest index down.
    built = []
    for plan in plans:
        factory = plan.factory
        if plan.point.kind == "block":
            factory = factory(result)
        built.append((plan, [m for _ in range(n) for m in factory()]))
    built.sort(key=lambda pb: (pb[0].container.count("."), pb[0].index or 0), reverse=True)
    for plan, modules in built:
        if plan.index is None:
            parent, attr = _parent(result, plan.container)
            save(parent)
            old = parent._modules[attr]
            for m in modules:  # new layers follow the mode of the module they follow
                m.train(old.training)
            wrapper = nn.Sequential(old, *modules)
            wrapper.training = old.training
            parent._modules[attr] = wrapper
        else:
            container = result.get_submodule(plan.container)
            save(container)
            before = list(container._modules.values())[: plan.index]
            training = before[-1].training if before else container.training
            for offset, m in enumerate(modules):
                if plan.point.kind != "block":  # copied blocks keep their own flags
                    m.train(training)
                _insert(container, plan.index + offset, m)

    def undo() -> None:
        for m, modules in saved.values():
            m._modules.clear()
            m._modules.update(modules)

    return undo
