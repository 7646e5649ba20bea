"""The search-space object: seed model, data, training recipe, growth operators, limits.

A search-space file (``search_spaces/*.py``) builds one :class:`SearchSpace` and names it
``space``; :func:`load_space` imports such a file by path. Nothing here imports Optuna.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError

Loaders = tuple[Any, Any]  # (train, validation): iterables of (inputs, targets) batches
OBJECTIVES = ("accuracy", "params")
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Training:
    """How every trial trains its model.

    Attributes:
        epochs: epochs per trial (the per-trial budget; ``--from-scratch`` children get the same).
        seed_epochs: epochs of the root trials that train the seed model (default: ``epochs``);
            a ``--from-scratch`` search trains every trial, the root included, ``epochs``.
        lr: learning rate of the seed and of children trained from scratch.
        lr_after_growth: learning rate of grown children. Net2Net trained students at 1/10 of
            the teacher's rate, which keeps them near the function they inherited. Not used
            when the search chooses an LR recipe (``Growth.lr_recipes``): children then train
            at ``lr`` scaled by the recipe.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        optimizer: optional ``(parameters, lr) -> torch.optim.Optimizer`` replacing SGD.

    >>> Training(epochs=2, lr=0.05).lr_after_growth
    0.005
    """

    epochs: int = 1
    seed_epochs: int | None = None
    lr: float = 0.05
    lr_after_growth: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: Callable[[Any, float], torch.optim.Optimizer] | None = None

    def __post_init__(self) -> None:
        if self.lr_after_growth is None:
            object.__setattr__(self, "lr_after_growth", self.lr / 10)
        for name in ("epochs", "seed_epochs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise InvalidArgumentError(f"Training.{name} must be an int >= 1, got {v!r}")

    def make_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """The optimizer for ``model`` at learning rate ``lr`` (SGD unless one was given)."""
        if self.optimizer is not None:
            return self.optimizer(model.parameters(), lr)
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=self.momentum, weight_decay=self.weight_decay
        )


@dataclass(frozen=True)
class Growth:
    """Which growth operators a trial may apply, and how it picks its parent.

    Attributes:
        widen: width groups that may widen, named as in ``autogrow.analyze(seed)`` (a group
            name or the name of a module whose output is in the group); None: every widenable
            group of the seed.
        factors: the factors a widening may use.
        deepen: places where depth may be added, as in ``autogrow.insertion_points(seed)``;
            None: every residual stage of the seed, or, without residual blocks, after each
            hidden activation. An empty list disables deepening.
        paired: also offer ``widen-paired``: widening with ``symmetry="paired"`` (equal
            shares plus zero-sum noise; exact) at the same sites and factors as ``widen``.
        stack: stacking factors to offer (``autogrow.stack``, ``order="repeat"``: every
            layer stack of the model, copies of its trained layers; not function-preserving);
            empty (default): no stacking. The seed must have a layer stack.
        lr_recipes: learning-rate recipes after growth for the search to choose from
            (``autogrow.training.lr.LR_RECIPES``: ``"keep"``, ``"rewarm"``, ``"tenth"``,
            ``"decay"``); a child then trains at ``Training.lr`` times the recipe's factor
            (``rewarm``: over the first tenth of its steps; ``decay``: a cosine to 0 over all
            of them). Empty (default): children train at ``Training.lr_after_growth``.
        min_ops, max_ops: how many growth operations one trial applies.
        top_k, tournament: parent selection. The candidates are the ``top_k`` best completed
            trials; ``tournament`` of them are drawn at random and the best of those is the
            parent (tournament selection: mostly good parents, some diversity).

    >>> Growth(factors=(1.5, 2.0), max_ops=1).kinds
    ('widen', 'deepen')
    >>> Growth(paired=True, stack=(2,), lr_recipes=("keep", "decay")).kinds
    ('widen', 'widen-paired', 'deepen', 'stack')
    """

    widen: Sequence[str] | None = None
    factors: Sequence[float] = (1.5, 2.0)
    deepen: Sequence[str] | None = None
    paired: bool = False
    stack: Sequence[int] = ()
    lr_recipes: Sequence[str] = ()
    min_ops: int = 1
    max_ops: int = 2
    top_k: int = 5
    tournament: int = 2

    def __post_init__(self) -> None:
        if not self.factors or any(not isinstance(f, (int, float)) or f <= 1 for f in self.factors):
            raise InvalidArgumentError(f"Growth.factors must be numbers > 1, got {self.factors!r}")
        if not (1 <= self.min_ops <= self.max_ops):
            raise InvalidArgumentError(
                f"Growth needs 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}"
            )
        if self.top_k < 1 or self.tournament < 1:
            raise InvalidArgumentError("Growth.top_k and Growth.tournament must be >= 1")
        if any(isinstance(f, bool) or not isinstance(f, int) or f < 2 for f in self.stack):
            raise InvalidArgumentError(f"Growth.stack must be ints >= 2, got {self.stack!r}")
        from ..training.lr import LR_RECIPES

        unknown = [r for r in self.lr_recipes if r not in LR_RECIPES]
        if unknown or isinstance(self.lr_recipes, str):
            raise InvalidArgumentError(
                f"Growth.lr_recipes must be a sequence of {LR_RECIPES}, got {self.lr_recipes!r}"
            )

    @property
    def kinds(self) -> tuple[str, ...]:
        """The operators allowed: widen unless ``widen=[]`` (and ``widen-paired`` with
        ``paired``), deepen unless ``deepen=[]``, stack with ``stack`` factors."""
        kinds = []
        if self.widen is None or len(self.widen) > 0:
            kinds.append("widen")
            if self.paired:
                kinds.append("widen-paired")
        if self.deepen is None or len(self.deepen) > 0:
            kinds.append("deepen")
        if self.stack:
            kinds.append("stack")
        return tuple(kinds)


@dataclass(frozen=True)
class SearchSpace:
    """Everything a growth search needs; a search-space file declares one as ``space``.

    Attributes:
        name: the default study name.
        seed: the seed model's importable factory, ``"package.module:callable"``.
        seed_kwargs: JSON keyword arguments for the factory.
        input_shape: shape of one example input batch (used to trace, grow and verify).
        data: ``() -> (train_loader, val_loader)``; called once per worker process.
        training: the training recipe.
        growth: the growth operators and parent selection.
        objectives: ``("accuracy",)`` (maximise validation accuracy; trials can be pruned) or
            ``("accuracy", "params")`` (a Pareto front of accuracy against parameter count;
            Optuna cannot prune multi-objective trials).
        max_params: a child with more parameters fails without training (None: no limit).
        pruner: ``"median"``, ``"hyperband"`` or ``"none"`` (single-objective only).
        seed_value: the base random seed (initialisation, growth, parent draws, sampler).
        source: the file the space was loaded from (set by :func:`load_space`); worker
            processes load the space again from it.

    >>> from autogrow.search import SearchSpace
    >>> s = SearchSpace("demo", "torch.nn:Linear", {"in_features": 4, "out_features": 2},
    ...                 (2, 4), data=lambda: ([], []))
    >>> s.directions
    ('maximize',)
    """

    name: str
    seed: str
    seed_kwargs: Mapping[str, Any]
    input_shape: tuple[int, ...]
    data: Callable[[], Loaders]
    training: Training = field(default_factory=Training)
    growth: Growth = field(default_factory=Growth)
    objectives: tuple[str, ...] = ("accuracy",)
    max_params: int | None = None
    pruner: str = "median"
    seed_value: int = 0
    source: str | None = None

    def __post_init__(self) -> None:
        if ":" not in self.seed:
            raise InvalidArgumentError(
                f"SearchSpace.seed must be 'package.module:callable', got {self.seed!r}"
            )
        objectives = tuple(self.objectives)
        if objectives not in (("accuracy",), ("accuracy", "params")):
            raise InvalidArgumentError(
                f"SearchSpace.objectives must be ('accuracy',) or ('accuracy', 'params'), "
                f"got {self.objectives!r}"
            )
        object.__setattr__(self, "objectives", objectives)
        if self.pruner not in PRUNERS:
            raise InvalidArgumentError(
                f"SearchSpace.pruner must be one of {PRUNERS}, got {self.pruner!r}"
            )

    @property
    def directions(self) -> tuple[str, ...]:
        """Optuna study directions of the objectives."""
        return tuple("maximize" if o == "accuracy" else "minimize" for o in self.objectives)

    @property
    def multi_objective(self) -> bool:
        """Whether the study has two objectives (then no pruning)."""
        return len(self.objectives) > 1

    def example_inputs(self) -> tuple[torch.Tensor]:
        """A fixed example input batch of ``input_shape`` (seeded, so every process agrees)."""
        gen = torch.Generator().manual_seed(self.seed_value)
        return (torch.randn(self.input_shape, generator=gen),)


def load_space(path: str | Path) -> SearchSpace:
    """Import a search-space file and return its ``space`` (with ``source`` set to the file).

    >>> space = load_space("search_spaces/digits_mlp.py")  # doctest: +SKIP
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise InvalidArgumentError(f"search space file {str(path)!r} does not exist")
    name = f"_autogrow_space_{path.stem}_{abs(hash(str(path))) % 10**8}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(f"cannot import {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    space = getattr(module, "space", None)
    if not isinstance(space, SearchSpace):
        raise InvalidArgumentError(
            f"{str(path)!r} must define `space = autogrow.search.SearchSpace(...)`; "
            f"found {type(space).__name__}"
        )
    return _with_source(space, str(path))


def _with_source(space: SearchSpace, source: str) -> SearchSpace:
    import dataclasses

    return dataclasses.replace(space, source=source)
