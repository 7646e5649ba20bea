"""The lineage a grown model carries: its seed's factory and the transforms applied since.

``widen`` and ``deepen`` call :func:`record_step` on the model they return, so every grown model
knows how to rebuild its architecture (:mod:`autogrow.checkpoint` replays it). The recipe is a
plain attribute (``model.autogrow_recipe``): not in ``state_dict``, copied by ``copy.deepcopy``,
and replaced (never mutated) on each step, so a parent and its child never share one. This is
data only: it lives with the transforms that write it, below the checkpoint code that reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError

RECIPE_ATTR = "autogrow_recipe"

__all__ = [
    "RECIPE_ATTR",
    "Recipe",
    "Step",
    "input_spec",
    "recipe_of",
    "record_step",
    "set_recipe",
]


@dataclass(frozen=True)
class Step:
    """One transform applied to a model, with every argument needed to replay it.

    Attributes:
        op: ``"widen"``, ``"deepen"`` or ``"stack"``.
        args: the transform's JSON-compatible keyword arguments (widen: ``factor``, ``seed``,
            ``symmetry``, ``noise``, ``pair_noise``; deepen: ``after`` as resolved
            ``[where, kind]`` pairs, ``n``; stack: ``factor``, ``order``, the ``stacks`` found).
        inputs: shape and dtype of each example input the transform ran on, or None when
            they were not all tensors (replay then infers inputs).

    >>> Step("deepen", {"after": [["0", "identity"]], "n": 1}, None).op
    'deepen'
    """

    op: str
    args: Mapping[str, Any]
    inputs: tuple[Mapping[str, Any], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (see :meth:`from_json`).

        >>> Step("widen", {"factor": 2.0}, ({"shape": [1, 4], "dtype": "float32"},)).to_json()
        {'op': 'widen', 'args': {'factor': 2.0}, 'inputs': [{'shape': [1, 4], 'dtype': 'float32'}]}
        """
        inputs = None if self.inputs is None else [dict(i) for i in self.inputs]
        return {"op": self.op, "args": _plain(self.args), "inputs": inputs}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        """The step :meth:`to_json` wrote.

        >>> Step.from_json({"op": "deepen", "args": {"n": 1}, "inputs": None}).args
        {'n': 1}
        """
        inputs = data.get("inputs")
        return cls(
            str(data["op"]),
            _plain(data.get("args") or {}),
            None if inputs is None else tuple(dict(i) for i in inputs),
        )


@dataclass(frozen=True)
class Recipe:
    """How to rebuild a model's architecture: a seed factory plus the steps applied since.

    Attributes:
        factory: ``"package.module:callable"`` that builds the seed model, or None if unknown.
        factory_kwargs: JSON keyword arguments for the factory.
        steps: the transforms applied since the seed, oldest first.

    >>> r = Recipe("torch.nn:Linear", {"in_features": 4, "out_features": 2})
    >>> Recipe.from_json(r.to_json()) == r
    True
    """

    factory: str | None = None
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[Step, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, as stored in ``recipe.json`` (see :meth:`from_json`).

        >>> Recipe("torch.nn:Linear", {"in_features": 2, "out_features": 2}).to_json()["factory"]
        'torch.nn:Linear'
        """
        return {
            "factory": self.factory,
            "factory_kwargs": _plain(self.factory_kwargs),
            "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe :meth:`to_json` wrote (other keys of ``data`` are ignored).

        >>> Recipe.from_json({"factory": "models:MLP", "steps": []})
        Recipe(factory='models:MLP', factory_kwargs={}, steps=())
        """
        return cls(
            data.get("factory"),
            _plain(data.get("factory_kwargs") or {}),
            tuple(Step.from_json(s) for s in data.get("steps") or ()),
        )

    def then(self, step: Step) -> Recipe:
        """A new recipe with ``step`` appended (this one is left as it is).

        >>> r = Recipe("models:MLP")
        >>> len(r.then(Step("deepen", {"after": [["fc1", "identity"]]})).steps), len(r.steps)
        (1, 0)
        """
        return Recipe(self.factory, self.factory_kwargs, (*self.steps, step))

    def with_factory(self, factory: str, kwargs: Mapping[str, Any]) -> Recipe:
        """A new recipe with the same steps from another seed factory.

        >>> Recipe().with_factory("models:MLP", {"d_in": 6}).factory_kwargs
        {'d_in': 6}
        """
        return Recipe(factory, _plain(kwargs), self.steps)


def _plain(value: Any) -> Any:
    """A fresh JSON-compatible copy (tuples become lists), so recipes never share containers."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(
            f"{value!r} cannot be stored in a growth recipe ({e}); use JSON values "
            "(str, int, float, bool, None, lists and dicts with str keys)"
        ) from None


def recipe_of(model: nn.Module) -> Recipe:
    """The recipe ``model`` carries (an empty one, with no factory, if it has none).

    >>> import torch
    >>> recipe_of(torch.nn.Linear(2, 2))
    Recipe(factory=None, factory_kwargs={}, steps=())
    """
    recipe = getattr(model, RECIPE_ATTR, None)
    return recipe if isinstance(recipe, Recipe) else Recipe()


def set_recipe(model: nn.Module, recipe: Recipe) -> None:
    """Attach ``recipe`` to ``model`` as a plain attribute (not a parameter, buffer or module).

    >>> import torch
    >>> net = torch.nn.Linear(2, 2); set_recipe(net, Recipe("torch.nn:Linear"))
    >>> recipe_of(net).factory, list(net.state_dict())
    ('torch.nn:Linear', ['weight', 'bias'])
    """
    setattr(model, RECIPE_ATTR, recipe)


def input_spec(inputs: Sequence[Any]) -> tuple[dict[str, Any], ...] | None:
    """Shape and dtype of each input, or None unless every input is a tensor.

    >>> import torch
    >>> input_spec((torch.zeros(2, 3),)), input_spec((torch.zeros(1), "mask"))
    (({'shape': [2, 3], 'dtype': 'float32'},), None)
    """
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        return None
    return tuple(
        {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")} for x in inputs
    )


def record_step(
    parent: nn.Module, child: nn.Module, op: str, args: Mapping[str, Any], inputs: Sequence[Any]
) -> None:
    """Give ``child`` the recipe of ``parent`` plus one step (``parent`` may be ``child``).

    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> record_step(a, b, "widen", {"factor": 2.0}, (torch.zeros(1, 2),))
    >>> len(recipe_of(a).steps), recipe_of(b).steps[0].op
    (0, 'widen')
    """
    step = Step(op, _plain(args), input_spec(inputs))
    set_recipe(child, recipe_of(parent).then(step))
