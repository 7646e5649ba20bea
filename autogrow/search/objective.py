"""One trial of a growth search: pick a parent, grow it, train, evaluate, store the checkpoint.

Parent selection (tournament): the candidates are the ``growth.top_k`` completed trials with
the highest validation accuracy (ties: fewer parameters, then the earlier trial); a random
``growth.tournament`` of them (drawn with a generator seeded by the space's seed and the trial
number) compete and the most accurate wins. While no trial has completed, a trial is a
*root*: it trains the seed model from its factory for ``training.seed_epochs``.

A grown child trains at ``training.lr_after_growth``, or, when the space offers LR recipes
(``growth.lr_recipes``), at ``training.lr`` under the recipe the trial samples (parameter and
user attribute ``lr_recipe``; :func:`autogrow.training.lr.recipe`).

Lineage is kept in user attributes: ``parent``, ``plan``, ``depth``, ``train_steps`` (this
trial), ``cumulative_steps`` (this trial plus every ancestor; with ``--from-scratch`` only this
trial's, since the child starts from random weights), ``sites``, ``checkpoint`` (artifact id).
A growth that autogrow refuses, or a child over ``max_params``, fails the trial with
``fail_reason`` set; the study goes on. A trial retried after its worker died (heartbeat) or
was interrupted resumes from its last per-epoch ``progress`` checkpoint.
"""

from __future__ import annotations

import os
import random
import socket
import warnings
from typing import Any

import torch

from ..errors import AutogrowError, ConstraintError
from . import checkpoints
from .growth import Sites, apply_plan, sample_plan, seed_sites, site_map, tag
from .space import SearchSpace
from .training import count_params, describe, evaluate, reinitialize, train_epoch


class GrowthObjective:
    """The Optuna objective of a growth search (``study.optimize(GrowthObjective(...))``).

    Args:
        space: the search space.
        store: an Optuna artifact store for checkpoints.
        from_scratch: train every child from random initialisation (the baseline), keeping
            the grown architecture; every trial, the root included, trains
            ``training.epochs`` (``seed_epochs`` is for the roots of growth searches, which
            train parents).

    .. code-block:: python

        store = optuna.artifacts.FileSystemArtifactStore("runs/x/artifacts")
        study.optimize(GrowthObjective(space, store), n_trials=10, catch=(AutogrowError,))
    """

    def __init__(self, space: SearchSpace, store: Any, *, from_scratch: bool = False) -> None:
        self.space = space
        self.store = store
        self.from_scratch = from_scratch
        self._loaders: tuple[Any, Any] | None = None
        self._sites: Sites | None = None
        self._inputs = space.example_inputs()

    # -- lazily built per process ---------------------------------------------------------

    @property
    def loaders(self) -> tuple[Any, Any]:
        if self._loaders is None:
            self._loaders = self.space.data()
        return self._loaders

    def probe(self) -> torch.Tensor:
        """A fixed batch of validation inputs (at most 32) saved with every checkpoint."""
        return next(iter(self.loaders[1]))[0][:32]

    def seed(self) -> Any:
        """A freshly initialised seed model (recording its factory for checkpoints)."""
        from ..checkpoint import seed_model

        return seed_model(self.space.seed, **dict(self.space.seed_kwargs))

    @property
    def sites(self) -> Sites:
        if self._sites is None:
            self._sites = seed_sites(self.seed(), self.space.growth, self._inputs)
        return self._sites

    # -- the trial -------------------------------------------------------------------------

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        try:
            return self._run(trial)
        except AutogrowError as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            raise

    def _run(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        space, training = self.space, self.space.training
        inherited = dict(trial.user_attrs)  # copied from the failed trial on a retry
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("from_scratch", self.from_scratch)
        frozen = _frozen(trial)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        seed = space.seed_value * 1_000_003 + trial.number

        recipe: str | None = None
        if "role" in inherited:
            parent = inherited.get("parent")
        else:
            parent = self._choose_parent(trial, seed)
        root = parent is None
        trial.set_user_attr("role", "root" if root else "child")
        trial.set_user_attr("parent", parent)
        if root:
            torch.manual_seed(seed)
            model = tag(self.seed(), {s: s for s in {*self.sites.widen, *self.sites.deepen}})
            plan: list[dict[str, Any]] = []
            depth, before = 0, 0
            lr, epochs = training.lr, training.seed_epochs or training.epochs
            if self.from_scratch:  # every candidate of the baseline gets the same budget
                epochs = training.epochs
        else:
            p = _trial(trial.study, parent)
            plan = sample_plan(trial, space.growth, self.sites)
            trial.set_user_attr("plan", plan)
            if space.growth.lr_recipes and not self.from_scratch:
                recipe = trial.suggest_categorical("lr_recipe", list(space.growth.lr_recipes))
                trial.set_user_attr("lr_recipe", recipe)
            model = tag(self._load(p.user_attrs["checkpoint"]), p.user_attrs["sites"])
            model = apply_plan(model, plan, self._inputs, seed)
            depth = p.user_attrs["depth"] + 1
            if self.from_scratch:
                reinitialize(model, seed)
                before, lr = 0, training.lr
            else:
                before, lr = p.user_attrs["cumulative_steps"], training.lr_after_growth
                if recipe is not None:  # the recipe scales the full rate
                    lr = training.lr
            epochs = training.epochs
        trial.set_user_attr("depth", depth)
        params = count_params(model)
        trial.set_user_attr("params", params)
        trial.set_user_attr("architecture", describe(model))
        if space.max_params is not None and params > space.max_params:
            raise ConstraintError(
                f"the grown model has {params} parameters, over the search space's "
                f"max_params={space.max_params}; the plan {plan} is not trained"
            )

        start, steps = 0, 0
        progress = inherited.get("progress")
        if progress:  # resume a retried trial where its last per-epoch checkpoint left it
            model = tag(self._load(progress["artifact"]), progress["sites"])
            start, steps = progress["epochs_done"], progress["steps"]
        trial.set_user_attr("resumed_at_epoch", start)

        torch.manual_seed(seed + 7919 * (start + 1))
        train, val = self.loaders
        optimizer = training.make_optimizer(model, lr)
        if recipe is not None:
            _apply_recipe(optimizer, recipe, epochs * _batches(train), done=steps)
        accuracy = float("nan")
        for epoch in range(start, epochs):
            steps += train_epoch(model, train, optimizer)
            accuracy = evaluate(model, val)
            trial.set_user_attr("train_steps", steps)
            trial.set_user_attr("cumulative_steps", before + steps)
            if not space.multi_objective:
                trial.report(accuracy, epoch)
                # pruning after the last epoch would only throw away a trained model
                if epoch + 1 < epochs and trial.should_prune():
                    trial.set_user_attr("accuracy", accuracy)
                    raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {accuracy:.4f}")
            if epoch + 1 < epochs:
                info = {"epochs_done": epoch + 1, "steps": steps, "sites": site_map(model)}
                art = self._upload(trial, model, f"trial{trial.number}-epoch{epoch + 1}", info)
                trial.set_user_attr("progress", {**info, "artifact": art})
        if start >= epochs:  # the trial died after its last epoch, before storing the result
            accuracy = evaluate(model, val)

        sites = site_map(model)
        trial.set_user_attr("sites", sites)
        trial.set_user_attr("accuracy", accuracy)
        art = self._upload(
            trial, model, f"trial{trial.number}", {"accuracy": accuracy, "sites": sites}
        )
        trial.set_user_attr("checkpoint", art)
        return accuracy if not space.multi_objective else (accuracy, float(params))

    def _load(self, artifact_id: str) -> Any:
        """A stored checkpoint; the study may be shared, so only the space's own seed factory
        (or one ``autogrow.load`` allows) is called."""
        return checkpoints.load_model(self.store, artifact_id, seed_factory=self.space.seed)

    def _upload(self, trial: Any, model: Any, name: str, info: dict[str, Any]) -> str:
        extra = {"trial": trial.number, "study": trial.study.study_name, **info}
        return checkpoints.upload(trial, self.store, model, self.probe(), extra, name)

    def _choose_parent(self, trial: Any, seed: int) -> int | None:
        """Tournament over the best ``top_k`` completed trials; None while there are none."""
        import optuna

        done = [
            t
            for t in trial.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
            if "checkpoint" in t.user_attrs
        ]
        if not done:
            return None
        growth = self.space.growth
        done.sort(key=rank_key)
        pool = random.Random(seed).sample(done[: growth.top_k], min(growth.tournament, len(done)))
        return min(pool, key=rank_key).number


def _batches(loader: Any) -> int:
    try:
        return len(loader)
    except TypeError:
        raise ConstraintError(
            "Growth.lr_recipes needs the training loader's length (len(train)) to know how "
            "many steps a child trains; return a sized loader (a DataLoader) from data()"
        ) from None


def _apply_recipe(optimizer: Any, name: str, total: int, *, done: int) -> None:
    """Put LR recipe ``name`` on ``optimizer`` for a child of ``total`` steps, ``done`` of
    which were taken before a resume (the recipe continues where it was)."""
    from ..training.lr import recipe

    steps = {"rewarm": max(1, total // 10), "decay": max(1, total)}.get(name)
    scale = recipe(optimizer, name, steps=steps)
    scale.taken = done


def rank_key(t: Any) -> tuple[float, int, int]:
    """Sort key: highest accuracy first, then fewer parameters, then the earlier trial."""
    return (-t.user_attrs.get("accuracy", float("-inf")), t.user_attrs.get("params", 0), t.number)


def _trial(study: Any, number: int) -> Any:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise KeyError(f"trial {number} not found in study {study.study_name!r}")


def _frozen(trial: Any) -> Any:
    """The FrozenTrial of a running trial (Optuna 5 has no ``Trial.system_attrs``)."""
    return _trial(trial.study, trial.number)
