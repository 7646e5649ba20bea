"""Where depth goes: ``after=`` resolved into placements, the default placement, and the plan.

A :class:`Placement` says which container the new modules go into (at which index), or which
module gets wrapped, and how to build them; :class:`DeepenPlan` is the frozen, public record of
the resolved places (``[(where, kind)]``) and ``n``, which is also what a recipe replays.
The default placement (``after=None``) is: after the last layer of each of a library's layer
stacks; else at the end of every run of residual blocks; else identity layers after the last
hidden layer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ...adapters import adapter_for
from ...errors import InvalidArgumentError, UnsupportedOpError
from ..layer_kinds import FEATURE_NORMS, LINEAR_OR_CONV, is_activation
from .branches import block_candidate, block_point, run_ends, zero_branch
from .points import InsertionKind, InsertionPoint
from .recorder import (
    Recording,
    end_index,
    is_container,
    parent_of,
    plain_sequential,
    run_between,
)
from .stacks import identity_point, identity_stack

After = str | InsertionPoint | Sequence[str | InsertionPoint] | None


@dataclass(frozen=True)
class DeepenPlan:
    """The places :func:`~autogrow.deepen` resolved ``after=`` into, and how many per place.

    Attributes:
        places: ``(where, kind)`` per place, in the order they were resolved; ``where`` is the
            module or stage the new blocks or layers follow.
        n: blocks or identity stacks inserted at each place.

    >>> DeepenPlan((("layer1", InsertionKind.BLOCK),), 2).recipe_args()
    {'after': [['layer1', 'block']], 'n': 2}
    """

    places: tuple[tuple[str, InsertionKind], ...]
    n: int

    def recipe_args(self) -> dict[str, Any]:
        """The JSON arguments a recipe step stores (``after`` as ``[where, kind]`` pairs).

        >>> DeepenPlan((("0", InsertionKind.IDENTITY),), 1).recipe_args()["after"]
        [['0', 'identity']]
        """
        return {"after": [[where, str(kind)] for where, kind in self.places], "n": self.n}


@dataclass
class Placement:
    """One resolved place: its point, and where and how its new modules are inserted."""

    point: InsertionPoint
    container: str  # where the new modules go (Sequential/ModuleList), or the module to wrap
    index: int | None  # insert position in container; None: wrap ``container``
    factory: Any  # () -> list[nn.Module]; for blocks, (result model) -> that factory


def check_n(n: Any) -> None:
    """Raise InvalidArgumentError unless ``n`` is an int >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"n must be an int >= 1 (layers or blocks per place), got {n!r}")


def normalise_after(after: Any) -> list[str | InsertionPoint] | None:
    """``after`` as a list of names and points (None stays None), or InvalidArgumentError."""
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


def placements(
    model: nn.Module, rec: Recording, targets: list[str | InsertionPoint] | None
) -> list[Placement]:
    """The placements for normalised ``after=`` targets (None: the default placement)."""
    if targets is None:
        return _default_placements(model, rec)
    result = []
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
        if kind not in (None, InsertionKind.BLOCK, InsertionKind.IDENTITY):
            raise InvalidArgumentError(f"InsertionPoint kind must be block or identity: {kind!r}")
        result.append(_placement_for(model, rec, name, module, kind))
    return result


def _placement_for(
    model: nn.Module, rec: Recording, name: str, module: nn.Module, kind
) -> Placement:
    label = name or "<model>"
    if kind != InsertionKind.IDENTITY:
        block_name = None
        if is_container(module) and len(module) > 0:
            block_name = (
                f"{name}.{list(module._modules)[-1]}" if name else list(module._modules)[-1]
            )
        elif name and block_candidate(model, name, rec):
            block_name = name
        if block_name is not None:
            stacks = rec.adapter.layer_stacks(model)
            outermost = name in stacks or name.rpartition(".")[0] in stacks
            point = block_point(model, block_name, rec, outermost=outermost)
            if point is not None:
                return _block_placement(model, block_name, point)
            _refuse_loop_calls(model, rec, block_name, kind)
        if kind == InsertionKind.BLOCK:
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
    if is_container(module) and type(module).forward is nn.Sequential.forward and len(module):
        # append identity layers at the end of a plain Sequential
        last = f"{name}.{list(module._modules)[-1]}" if name else list(module._modules)[-1]
        point, factory = identity_stack(model, last, rec)
        point = InsertionPoint(name, InsertionKind.IDENTITY, point.inserts, point.exact_in_train)
        return Placement(point, name, len(module), factory)
    if not name:
        raise InvalidArgumentError(
            f"after names the whole model ({type(model).__name__}), which cannot be wrapped "
            "without changing its class; name a submodule"
        )
    point, factory = identity_stack(model, name, rec)
    parent, attr = parent_of(model, name)
    if plain_sequential(parent):
        parent_name = name.rpartition(".")[0]
        return Placement(point, parent_name, list(parent._modules).index(attr) + 1, factory)
    return Placement(point, name, None, factory)


def _refuse_loop_calls(model: nn.Module, rec: Recording, block_name: str, kind: Any) -> None:
    """Refuse a block where the model's loop over its container runs other modules between
    the blocks (a shared position encoding applied before each block): a new block would
    bring one more call of them, which no zeroing inside the block undoes."""
    container = block_name.rpartition(".")[0]
    between = run_between(rec, container, list(model.get_submodule(container)._modules))
    if between and (
        kind == InsertionKind.BLOCK or isinstance(model.get_submodule(container), nn.ModuleList)
    ):
        raise UnsupportedOpError(
            f"forward runs {', '.join(repr(b) for b in between[:3])} between the blocks of "
            f"{container!r} (its loop calls them once per block), so a new block there would "
            "add one more call of them and change the function; deepen another stage, or "
            "name a module inside one of its blocks (see autogrow.insertion_points(model))"
        )


def _block_placement(model: nn.Module, block_name: str, point: InsertionPoint) -> Placement:
    parent_name, _, attr = block_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    index = list(parent._modules).index(attr) + 1

    def factory_for(result: nn.Module):
        def factory() -> list[nn.Module]:
            new = copy.deepcopy(result.get_submodule(block_name))
            zero_branch(new, point._zero, adapter_for(result))
            return [new]

        return factory

    return Placement(point, parent_name, index, factory_for)


def _default_placements(model: nn.Module, rec: Recording) -> list[Placement]:
    result = []
    stacks = rec.adapter.layer_stacks(model)
    for stack in stacks:  # a library's layer stacks (its config counts them): after the last
        last = f"{stack}.{len(model.get_submodule(stack)) - 1}"
        point = block_point(model, last, rec, outermost=True)
        if point is not None:
            result.append(_block_placement(model, last, point))
    if result:
        return result
    if stacks:  # identity layers elsewhere would leave a model its config cannot describe
        raise UnsupportedOpError(
            f"no layer of {type(model).__name__}'s {', '.join(stacks)} becomes the identity when "
            "its output projections are zeroed, so a copied layer would change the function. "
            "Post-LayerNorm layers (x -> LayerNorm(x + f(x))) are such: with f = 0 a copy "
            "computes LayerNorm(x), and x, the previous LayerNorm's output gamma*n + beta, is "
            "its own normalisation only while gamma and beta are the same for every feature "
            "(1 and 0 at initialisation); nothing inside the copy can undo the division by "
            "each token's spread (docs/deepen.md, 'Post-LayerNorm stacks'). Instead: "
            "autogrow.widen(model, 2.0) grows width exactly; autogrow.stack(model) copies "
            "whole layers (not function-preserving: it measures the change); identity layers "
            "elsewhere (after=..., see autogrow.insertion_points(model)) are refused where the "
            "model's config counts its layers, as the config could not describe them."
        )
    for name in run_ends(model, rec):
        point = block_point(model, name, rec)
        if point is not None:
            result.append(_block_placement(model, name, point))
    if result:
        return result
    hidden = _last_hidden(model, rec)
    return [_placement_for(model, rec, hidden, model.get_submodule(hidden), InsertionKind.IDENTITY)]


def _last_hidden(model: nn.Module, rec: Recording) -> str:
    order = [o for o in rec.order if o in rec.calls]
    heads = [i for i, o in enumerate(order) if isinstance(model.get_submodule(o), LINEAR_OR_CONV)]
    if len(heads) < 2:
        raise UnsupportedOpError(
            f"{type(model).__name__} has no hidden Linear/Conv layer before its output layer and "
            "no residual blocks, so there is no default place to add depth; pass after=..."
        )
    head = heads[-1]
    previous = max(i for i, o in enumerate(order[:head]) if _is_hidden_parametric(model, o))
    window = order[previous:head]
    usable = [o for o in window if identity_point(model, o, rec) is not None]
    for o in reversed(usable):
        if is_activation(model.get_submodule(o)):
            return _in_sequential(model, o, rec)
    if usable:
        return _in_sequential(model, usable[-1], rec)
    raise UnsupportedOpError(
        f"found no module before {order[head]!r} after which identity layers fit; pass after=..."
    )


def _in_sequential(model: nn.Module, leaf: str, rec: Recording) -> str:
    """``leaf``, or the innermost ancestor ending with it whose parent is a plain Sequential.

    Inserting into a Sequential keeps the module tree readable and never wraps a module that
    forward code may read attributes of (``self.norm1.eps``).
    """
    name, end = leaf, end_index(leaf, rec)
    while name:
        parent, _ = parent_of(model, name)
        call = rec.calls.get(name)
        if (
            plain_sequential(parent)
            and call is not None
            and call.calls == 1
            and identity_point(model, name, rec) is not None
        ):
            return name
        name = name.rpartition(".")[0]
        if not name or end_index(name, rec) != end:
            break
    return leaf


def _is_hidden_parametric(model: nn.Module, name: str) -> bool:
    return isinstance(model.get_submodule(name), (*LINEAR_OR_CONV, *FEATURE_NORMS))
