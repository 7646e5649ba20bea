"""Growing an optimizer's state with the model: the same unit mapping as the weights.

Two kinds of state (derivation and measurements in ``docs/training-state.md``):

* SGD's ``momentum_buffer`` is a velocity (the step is ``-lr * buffer``): it is grown like the
  weights (copied along axes whose units were replicated, times the replica's outgoing share
  ``s`` along axes contracted with them), so the grown model keeps moving as the old one did.
* Adam's moments are gradient statistics (the step ``exp_avg / sqrt(exp_avg_sq)`` ignores their
  scale) that get mixed with the grown model's next gradients, which are the old gradients mapped
  *dually* to the weights: times ``s`` along replicated axes, copied along contracted ones. So
  ``exp_avg`` takes ``s`` and ``exp_avg_sq``/``max_exp_avg_sq`` take ``s²`` along the
  replicated axes, and are copied along the contracted ones. Step counts are kept.

The same two kinds cover the other element-wise ``torch.optim`` optimizers (``STATE_RULES``):
RMSprop, Adagrad, Adamax, NAdam, RAdam, Adadelta, Rprop and ASGD. Others are refused.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .axis_maps import AxisMap, grow_tensor

Rule = tuple[int, bool] | None  # (power of the shares, grown like a gradient); None: copied
_ADAM: dict[str, Rule] = {
    "step": None,
    "exp_avg": (1, True),
    "exp_avg_sq": (2, True),
    "max_exp_avg_sq": (2, True),
}
# Per supported optimizer class: how each state entry grows. Gradient statistics (moments,
# running sums of squares, the previous gradient) grow like the gradient, to the power of the
# statistic; velocities and weight-space quantities (momentum buffers, Rprop's step sizes,
# Adadelta's squared updates, ASGD's averaged weights) grow like the weights. Scalars are copied.
STATE_RULES: dict[type[torch.optim.Optimizer], dict[str, Rule]] = {
    torch.optim.SGD: {"momentum_buffer": (1, False)},  # a velocity: grown like the weights
    torch.optim.Adam: _ADAM,
    torch.optim.AdamW: _ADAM,
    torch.optim.RAdam: _ADAM,
    torch.optim.NAdam: {**_ADAM, "mu_product": None},
    torch.optim.Adamax: {"step": None, "exp_avg": (1, True), "exp_inf": (1, True)},
    torch.optim.RMSprop: {
        "step": None,
        "square_avg": (2, True),
        "grad_avg": (1, True),
        "momentum_buffer": (1, False),
    },
    torch.optim.Adagrad: {"step": None, "sum": (2, True)},
    torch.optim.Adadelta: {"step": None, "square_avg": (2, True), "acc_delta": (2, False)},
    torch.optim.Rprop: {"step": None, "prev": (1, True), "step_size": (1, False)},
    torch.optim.ASGD: {"step": None, "eta": None, "mu": None, "ax": (1, False)},
}
# Optimizers refused with a reason of their own (their state is not shaped like the parameters).
_REFUSED: dict[str, str] = {
    "Adafactor": (
        "its factored second moments (row_var, col_var) are row and column means of the "
        "squared gradient, which a widened axis changes in a way the old means do not determine"
    ),
    "LBFGS": "its state is a history of flattened update directions, not per-parameter tensors",
    "SparseAdam": "it is meant for sparse gradients (embeddings) that autogrow does not grow",
    "Muon": "its update orthogonalizes whole momentum matrices, which growth does not preserve",
}


def check_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module | Mapping[str, torch.Tensor] | None = None
) -> dict[str, Rule]:
    """Raise :class:`~autogrow.InvalidArgumentError` unless autogrow can grow ``optimizer``
    (over parameters of ``model``, when given).

    Returns how each state entry of its class grows: (power of the shares, like a gradient).

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> check_optimizer(torch.optim.SGD([p], lr=0.1, momentum=0.9))
    {'momentum_buffer': (1, False)}
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidArgumentError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    powers = STATE_RULES.get(type(optimizer))
    if powers is None:
        cls = type(optimizer)
        why = _REFUSED.get(cls.__name__) if cls.__module__.startswith("torch.optim") else None
        supported = ", ".join(f"torch.optim.{c.__name__}" for c in STATE_RULES)
        raise InvalidArgumentError(
            f"cannot grow the state of a {cls.__module__}.{cls.__qualname__} optimizer: "
            + (f"{why}. " if why else f"autogrow knows the state of {supported} only. ")
            + "Pass optimizer=None and build a fresh optimizer over the grown model's "
            "parameters instead (its state starts empty)."
        )
    for state in optimizer.state.values():
        unknown = sorted(set(state) - set(powers))
        if unknown:
            raise InvalidArgumentError(
                f"{type(optimizer).__name__} state entries {unknown} are not known to autogrow "
                f"(it grows {sorted(powers)}); pass optimizer=None and build a fresh optimizer."
            )
    if model is not None:
        names = _names(model)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in names:
                    raise InvalidArgumentError(
                        f"the optimizer holds a parameter of shape {tuple(p.shape)} that is not "
                        "in the model being grown; give widen an optimizer over that model's "
                        "parameters only"
                    )
    return powers


def _names(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[int, str]:
    """Parameter id -> qualified name (a tied parameter goes by its first name)."""
    named = (
        model.named_parameters(remove_duplicate=False)
        if isinstance(model, nn.Module)
        else model.items()
    )
    out: dict[int, str] = {}
    for name, t in named:
        out.setdefault(id(t), name)
    return out


def grow_optimizer(
    optimizer: torch.optim.Optimizer,
    old: nn.Module | Mapping[str, torch.Tensor],
    new: nn.Module,
    mappings: Mapping[str, Sequence[AxisMap]],
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over ``new``'s parameters, with grown state.

    Each parameter of ``optimizer`` is found by name in ``old`` (a model, or its
    ``named_parameters(remove_duplicate=False)`` taken before an in-place change) and replaced by
    the parameter of that name in ``new``. Param groups keep their hyperparameters and order;
    parameters that are not in ``optimizer`` stay out of the new one. State entries are grown
    with ``mappings[name]`` as the module docstring says or, for parameters without a mapping,
    cloned. ``optimizer`` itself is left untouched.

    Args:
        optimizer: a ``torch.optim`` optimizer of ``STATE_RULES`` over parameters of ``old``.
        old: the model before growth, or its parameters by qualified name.
        new: the grown model.
        mappings: per qualified parameter name, the grown axes (as ``widen`` computes them
            with :func:`autogrow.transforms.widen.param_axis_maps`).

    Raises:
        InvalidArgumentError: an unsupported optimizer class or state entry, or a parameter of
            ``optimizer`` that is not in ``old`` or has no counterpart in ``new``.

    Usually called through ``autogrow.widen(model, factor, optimizer=opt)``:

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    >>> net(torch.randn(4, 2)).sum().backward(); opt.step()
    >>> wide, opt2 = autogrow.widen(net, 2.0, optimizer=opt, seed=0)
    >>> opt2.state[wide[0].weight]["exp_avg"].shape, opt2.state[wide[0].weight]["step"]
    (torch.Size([6, 2]), tensor(1.))
    """
    powers = check_optimizer(optimizer, old)
    name_of = _names(old)
    new_named = dict(new.named_parameters(remove_duplicate=False))

    def counterpart(p: torch.Tensor) -> tuple[str, torch.Tensor]:
        name = name_of[id(p)]
        if name not in new_named:
            raise InvalidArgumentError(
                f"parameter {name!r} of the optimizer has no counterpart in the grown model"
            )
        return name, new_named[name]

    def replace(p: torch.Tensor) -> tuple[torch.Tensor, Sequence[AxisMap]]:
        name, q = counterpart(p)
        return q, mappings.get(name, ())

    return _rebuild(optimizer, powers, replace, {})


def extend_optimizer(
    optimizer: torch.optim.Optimizer,
    old: nn.Module,
    new: nn.Module,
    copies: Mapping[int, torch.Tensor],
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over a deepened model: old state kept, new layers added.

    Each parameter of ``optimizer`` is replaced by its copy in ``new`` (``copies``: ``id`` of a
    parameter of ``old`` to the same parameter in ``new``; the parameter itself after an
    in-place change) with its state cloned, so the old layers keep their momentum and step
    counts. The parameters of ``new`` that are copies of none of ``old``'s (the inserted
    layers) join, without state, the param group of the nearest earlier parameter with as
    many dimensions (the layer they follow: weights with weights, biases with biases, so
    "no weight decay on biases and norms" groups stay right), else of the nearest later one,
    else the first group. ``optimizer`` itself is left untouched.

    Args:
        optimizer: a ``torch.optim`` optimizer of ``STATE_RULES`` over parameters of ``old``.
        old: the model before deepening.
        new: the deepened model.
        copies: ``id(p)`` of every parameter ``p`` of ``old`` to its counterpart in ``new``.

    Usually called through ``autogrow.deepen(model, optimizer=opt)``:

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> net(torch.randn(4, 2)).sum().backward(); opt.step()
    >>> deep, opt2 = autogrow.deepen(net, optimizer=opt)
    >>> len(opt2.param_groups[0]["params"]), "momentum_buffer" in opt2.state[deep[0].weight]
    (6, True)
    """
    powers = check_optimizer(optimizer, old)
    group_of: dict[int, int] = {}

    def replace(p: torch.Tensor) -> tuple[torch.Tensor, Sequence[AxisMap]]:
        return copies[id(p)], ()

    kept = {id(q) for q in copies.values()}
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            group_of[id(copies[id(p)])] = i
    ordered = list(new.parameters())
    added: dict[int, list[torch.Tensor]] = {}
    for k, q in enumerate(ordered):
        if id(q) in kept:
            continue
        earlier = (r for r in reversed(ordered[:k]) if id(r) in group_of and r.ndim == q.ndim)
        later = (r for r in ordered[k + 1 :] if id(r) in group_of and r.ndim == q.ndim)
        near = next(earlier, None)
        near = next(later, None) if near is None else near
        added.setdefault(0 if near is None else group_of[id(near)], []).append(q)
    position = {id(q): k for k, q in enumerate(ordered)}
    return _rebuild(optimizer, powers, replace, added, position)


def copy_optimizer(
    optimizer: torch.optim.Optimizer,
    old: nn.Module,
    new: nn.Module,
    copies: Mapping[int, torch.Tensor],
    clones: Mapping[int, torch.Tensor],
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over a model whose layers were copied (``stack``).

    Each parameter of ``optimizer`` is replaced by its counterpart in ``new`` (``copies``: id
    of a parameter of ``old`` to the same parameter in ``new``) with its state cloned; each
    parameter of ``new`` that copies a layer (``clones``: its id to the parameter of ``old`` it
    was copied from) joins its source's param group with a clone of its source's state
    (momentum, moments, step count), in model order. ``optimizer`` is left untouched.

    Usually called through ``autogrow.stack(model, optimizer=opt)``:

    >>> import torch, autogrow
    >>> blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    ...                                for _ in range(2)])
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), blocks, torch.nn.Linear(3, 1))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> net(torch.randn(4, 2)).sum().backward(); opt.step()
    >>> deep, opt2 = autogrow.stack(net, 2, optimizer=opt)
    >>> len(opt2.param_groups[0]["params"]), torch.equal(
    ...     opt2.state[deep[1][2][0].weight]["momentum_buffer"],
    ...     opt.state[net[1][0][0].weight]["momentum_buffer"])
    (12, True)
    """
    powers = check_optimizer(optimizer, old)

    def replace(p: torch.Tensor) -> tuple[torch.Tensor, Sequence[AxisMap]]:
        return copies[id(p)], ()

    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    added: dict[int, list[torch.Tensor]] = {}
    for q in new.parameters():
        source = clones.get(id(q))
        if source is not None and id(source) in group_of:
            added.setdefault(group_of[id(source)], []).append(q)
    position = {id(q): k for k, q in enumerate(new.parameters())}
    result = _rebuild(optimizer, powers, replace, added, position)
    for q in new.parameters():
        source = clones.get(id(q))
        if source is not None and source in optimizer.state:
            result.state[q] = {
                key: _grow_entry(value, (), powers[key])
                for key, value in optimizer.state[source].items()
            }
    return result


def _rebuild(
    optimizer: torch.optim.Optimizer,
    powers: Mapping[str, Rule],
    replace: Callable[[torch.Tensor], tuple[torch.Tensor, Sequence[AxisMap]]],
    added: Mapping[int, list[torch.Tensor]],
    position: Mapping[int, int] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer of the same class over the replaced parameters (plus ``added[group]``).

    A group whose parameters are in model order (``position``: parameter id -> index in the
    new model) gets its added parameters in model order too, so that the new optimizer's
    ``state_dict`` matches one built afresh over the grown model (a Trainer or Lightning
    resuming from a checkpoint builds it so); other groups get them at the end.
    """
    groups = []
    state: dict[torch.Tensor, dict[str, object]] = {}
    for i, group in enumerate(optimizer.param_groups):
        params = []
        for p in group["params"]:
            q, axes = replace(p)
            params.append(q)
            if p in optimizer.state:
                state[q] = {
                    key: _grow_entry(value, axes, powers[key])
                    for key, value in optimizer.state[p].items()
                }
        extra = added.get(i, [])
        ranks = [position.get(id(q), -1) for q in params] if position and extra else []
        if ranks and -1 not in ranks and ranks == sorted(ranks):
            params = sorted([*params, *extra], key=lambda q: position[id(q)])
        else:
            params += extra
        hyper = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
        groups.append({**hyper, "params": params})
    result = type(optimizer)(groups, **_constructor_defaults(optimizer))
    result.defaults = copy.deepcopy(optimizer.defaults)
    for q, entries in state.items():
        result.state[q] = entries
    return result


def _grow_entry(value: object, axes: Sequence[AxisMap], rule: Rule) -> object:
    if not isinstance(value, torch.Tensor):
        return copy.deepcopy(value)  # e.g. momentum_buffer=None before the first step
    if rule is None or not axes or value.ndim == 0:
        return value.detach().clone()
    power, gradient = rule
    return grow_tensor(value.detach(), axes, power=power, gradient=gradient)


def _constructor_defaults(optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """The optimizer's defaults that its constructor accepts (AdamW sets some itself)."""
    accepted = inspect.signature(type(optimizer)).parameters
    return {k: copy.deepcopy(v) for k, v in optimizer.defaults.items() if k in accepted}
