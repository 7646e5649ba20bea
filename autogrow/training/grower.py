"""Grow a model inside a training loop: at scheduled steps or on a loss plateau.

:class:`Grower` decides when to grow, applies the growth operation to the model *and* to the
training state (optimizer state, learning-rate scheduler, DDP wrapper, FSDP2 shards), and
checks in a distributed run that every rank grew the same way before anything is replaced.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AutogrowError, InvalidArgumentError
from . import distributed as dist_
from .lr import DEFAULT_LR_RECIPE, LR_RECIPES, LRScale, carry_scheduler, recipe
from .ops import OPS, Op

__all__ = ["GrowthError", "GrowthEvent", "Grower"]


class GrowthError(AutogrowError):
    """Growth was refused or failed; the model, optimizer and scheduler are unchanged (on
    every rank: a failure on one rank is raised on all of them)."""


@dataclass(frozen=True)
class GrowthEvent:
    """One growth: at which step, what, with which seed, how long it took (seconds, this
    rank), and the digest of the grown training state (equal on every rank)."""

    step: int
    op: Op
    seed: int
    seconds: float
    digest: str


class Grower:
    """Grows a model, its optimizer state and its LR schedule at chosen training steps.

    Call :meth:`step` once per training step, after ``optimizer.step()`` and
    ``scheduler.step()``; it returns the same objects, or new ones after growth (the grown
    model, a new optimizer over its parameters with the state grown, the scheduler carried
    over to it at the same step count). A DDP model is unwrapped, grown and re-wrapped with
    the same arguments; an FSDP2 (``fully_shard``) model is gathered, grown and re-sharded
    with ``shard`` (give ``build`` as well). In a distributed run every rank must call
    ``step`` at the same steps; growth uses the same seed on every rank and compares a digest
    of the grown state across ranks before replacing anything.

    Args:
        schedule: training step -> operation (``autogrow.op.widen(2.0)``,
            ``autogrow.op.deepen()``); the model grows right after that step (steps counted
            from 0, as ``enumerate(loader)`` counts them).
        on_plateau: an operation to apply when the loss (``step(..., loss=)``, averaged over
            ranks) has not improved by ``min_delta`` for ``patience`` steps; at most
            ``max_plateau_growths`` times.
        lr: the learning-rate recipe after each growth, a scale on the carried schedule
            (:func:`autogrow.training.lr.recipe`): ``"keep"``: the schedule continues
            unchanged; ``"rewarm"``: the ``warmup`` optimizer steps after growth run at
            ``j / warmup`` of the schedule's rate; ``"tenth"``: every step after growth runs
            at 0.1 × the schedule's rate (Net2Net); ``"decay"``: the rate decays from the
            schedule's to 0 along a cosine over the ``decay_steps`` steps after growth
            (LEMON). Default: ``autogrow.training.lr.DEFAULT_LR_RECIPE`` (``"keep"``).
        warmup: ``lr="rewarm"``: the steps of the warm-up.
        decay_steps: ``lr="decay"`` (required there): the steps over which the rate decays,
            e.g. the training steps left after growth.
        seed: the seed of every growth (None: drawn once here; in a distributed run rank
            0's is used). Growth ``k`` at step ``s`` uses a seed derived from it and ``s``.
        example_inputs: passed to :func:`autogrow.widen`/``deepen`` (None: inferred).
        verify: passed to ``widen``/``deepen``: compare the grown model's outputs.
        tolerance: passed to ``widen``/``deepen``: the error ``verify`` accepts.
        build: FSDP2 only: returns an unsharded module of the model's architecture before the
            first growth (called once, e.g. under ``torch.device("meta")``).
        shard: FSDP2 only: applies ``fully_shard`` to a grown unsharded module (in place or
            returning it), as was done to the original model.
        check_ranks: compare the grown state across ranks (an all-gather of a digest).

    Raises:
        InvalidArgumentError: a malformed schedule (a step that is not an int >= 0, an
            operation that is not an ``autogrow.op``), an unknown ``lr`` policy.

    >>> import torch, autogrow
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    >>> sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=10)
    >>> grower = autogrow.Grower({2: autogrow.op.widen(2.0)}, seed=0)
    >>> for step in range(4):
    ...     loss = model(torch.randn(16, 4)).pow(2).mean()
    ...     loss.backward(); opt.step(); sched.step(); opt.zero_grad()
    ...     model, opt, sched = grower.step(step, model, opt, sched)
    >>> model[0].out_features, sched.last_epoch, [e.step for e in grower.history]
    (16, 4, [2])
    """

    def __init__(
        self,
        schedule: Mapping[int, Op] | None = None,
        *,
        on_plateau: Op | None = None,
        patience: int = 100,
        min_delta: float = 0.0,
        max_plateau_growths: int = 1,
        lr: str = DEFAULT_LR_RECIPE,
        warmup: int = 100,
        decay_steps: int | None = None,
        seed: int | None = None,
        example_inputs: tuple[Any, ...] | None = None,
        verify: bool = True,
        tolerance: float | None = None,
        build: Callable[[], nn.Module] | None = None,
        shard: Callable[[nn.Module], nn.Module | None] | None = None,
        check_ranks: bool = True,
    ) -> None:
        schedule = {} if schedule is None else schedule
        if not isinstance(schedule, Mapping):
            raise InvalidArgumentError(
                f"schedule must be a dict step -> autogrow.op..., got {type(schedule).__name__}"
            )
        for k, v in schedule.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise InvalidArgumentError(f"schedule steps must be ints >= 0, got {k!r}")
            if not isinstance(v, OPS):
                raise InvalidArgumentError(
                    f"schedule[{k}] must be an operation (autogrow.op.widen(...), "
                    f"autogrow.op.deepen(...), autogrow.op.stack(...)), got {v!r}"
                )
        if on_plateau is not None and not isinstance(on_plateau, OPS):
            raise InvalidArgumentError(f"on_plateau must be an autogrow.op, got {on_plateau!r}")
        if lr not in LR_RECIPES:
            raise InvalidArgumentError(f"lr must be one of {LR_RECIPES}, got {lr!r}")
        if lr == "decay" and decay_steps is None:
            raise InvalidArgumentError(
                'lr="decay" needs decay_steps= (the steps over which the rate decays after '
                "growth, e.g. the training steps left)"
            )
        if decay_steps is not None and (
            isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1
        ):
            raise InvalidArgumentError(f"decay_steps must be an int >= 1, got {decay_steps!r}")
        for name, value in (("patience", patience), ("warmup", warmup)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidArgumentError(f"seed must be an int or None, got {seed!r}")
        self.schedule: dict[int, Op] = dict(sorted(schedule.items()))
        self.on_plateau = on_plateau
        self.patience = patience
        self.min_delta = float(min_delta)
        self.max_plateau_growths = max_plateau_growths
        self.lr = lr
        self.warmup = warmup
        self.decay_steps = decay_steps
        self.seed = random.SystemRandom().randrange(2**62) if seed is None else seed
        self._seed_agreed = False
        self.options: dict[str, Any] = {"verify": verify, "tolerance": tolerance}
        if example_inputs is not None:
            self.options["example_inputs"] = example_inputs
        self.build = build
        self.shard = shard
        self.check_ranks = check_ranks
        self.history: list[GrowthEvent] = []
        self.lr_recipe: LRScale | None = None
        self._done: set[int] = set()
        self._last: int | None = None
        self._best = math.inf
        self._since = 0
        self._plateau_growths = 0
        self._checked = False
        self._template: nn.Module | None = None

    @property
    def rewarm(self) -> LRScale | None:
        """The learning-rate recipe running since the last growth (None with ``"keep"`` or
        before growth); the earlier name of :attr:`lr_recipe`."""
        return self.lr_recipe

    @property
    def template(self) -> nn.Module | None:
        """FSDP2: the unsharded architecture of the model after the last growth (parameters
        on the ``meta`` device), or None before the first growth."""
        return self._template

    # -- bookkeeping -----------------------------------------------------------------------

    def resume(self, step: int) -> None:
        """Continue after ``step`` with a model that already had the growths scheduled up to
        it (restored from a checkpoint saved after growth): they are not applied again.

        >>> import autogrow
        >>> g = autogrow.Grower({5: autogrow.op.deepen()})
        >>> g.resume(7); g.pending()
        {}
        """
        for k in self.schedule:
            if k <= step:
                self._done.add(k)
        self._last = step

    def pending(self) -> dict[int, Op]:
        """The scheduled growths not applied yet."""
        return {k: v for k, v in self.schedule.items() if k not in self._done}

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to continue (seed, applied steps, plateau)."""
        return {
            "seed": self.seed,
            "done": sorted(self._done),
            "last": self._last,
            "best": self._best,
            "since": self._since,
            "plateau_growths": self._plateau_growths,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (after resuming from a checkpoint)."""
        self.seed = int(state["seed"])
        self._done = set(state["done"])
        self._last = state["last"]
        self._best = float(state["best"])
        self._since = int(state["since"])
        self._plateau_growths = int(state["plateau_growths"])

    def seed_for(self, step: int) -> int:
        """The seed of a growth at ``step`` (the same on every rank)."""
        return (self.seed * 1_000_003 + step) % (2**62)

    def due(self, step: int, loss: float | None = None) -> Op | None:
        """The operation to apply after ``step`` (None: no growth now).

        Raises :class:`GrowthError` for a scheduled step that was passed without growth.
        """
        past = [k for k in self.pending() if k < step]
        if past:
            raise GrowthError(
                f"schedule step {past[0]} is in the past: the grower is at step {step} and "
                f"never saw step {past[0]}. Call grower.step at every step, or "
                f"grower.resume({step - 1}) if that growth is already in the model."
            )
        if step in self.schedule and step not in self._done:
            return self.schedule[step]
        if self.on_plateau is None:
            return None
        if loss is None:
            raise InvalidArgumentError("on_plateau needs the loss: grower.step(..., loss=loss)")
        value = dist_.mean(float(loss))  # the same decision on every rank
        if value < self._best - self.min_delta:
            self._best, self._since = value, 0
            return None
        self._since += 1
        if self._since >= self.patience and self._plateau_growths < self.max_plateau_growths:
            return self.on_plateau
        return None

    # -- the step --------------------------------------------------------------------------

    def step(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        *,
        loss: float | torch.Tensor | None = None,
        inplace: bool = False,
    ) -> tuple[nn.Module, Any, Any]:
        """Call after training step ``step``; returns ``(model, optimizer, scheduler)``, the
        given objects or, after growth, the grown ones. ``inplace=True`` grows a plain
        (unwrapped) model in place, keeping the module object (what the Trainer and
        Lightning callbacks use).

        Raises:
            GrowthError: a step that does not increase, a scheduled step in the past, a
                growth that failed on some rank, ranks that disagree; nothing is changed.
            InvalidArgumentError: an optimizer autogrow cannot grow (checked on the first
                call), a scheduler without an optimizer, FSDP2 without ``build``/``shard``.
            AutogrowError: the operation cannot apply to this model (the error of
                :func:`autogrow.widen`/``deepen``); nothing is changed.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidArgumentError(f"step must be an int >= 0, got {step!r}")
        if self._last is not None and step <= self._last:
            raise GrowthError(f"steps must increase: got {step} after {self._last}")
        if not self._checked:
            self._preflight(model, optimizer, scheduler)
        if isinstance(loss, torch.Tensor):
            loss = float(loss.detach())
        op = self.due(step, loss)
        self._last = step
        if op is None:
            return model, optimizer, scheduler
        return self._grow(step, op, model, optimizer, scheduler, inplace)

    def _preflight(self, model: nn.Module, optimizer: Any, scheduler: Any) -> None:
        from ..transforms.optimizer import check_optimizer

        if scheduler is not None and optimizer is None:
            raise InvalidArgumentError("a scheduler needs its optimizer: pass both")
        if optimizer is not None:
            inner = model.module if dist_.is_ddp(model) else model
            check_optimizer(optimizer, inner)
        if dist_.is_fsdp(model) and (self.build is None or self.shard is None):
            raise InvalidArgumentError(
                "an FSDP2 (fully_shard) model needs Grower(build=..., shard=...): build() "
                "returns the unsharded architecture, shard(module) applies fully_shard to it"
            )
        self._checked = True

    def _grow(
        self,
        step: int,
        op: Op,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        inplace: bool,
    ) -> tuple[nn.Module, Any, Any]:
        start = time.perf_counter()
        if not self._seed_agreed:
            self.seed = dist_.broadcast(self.seed)
            self._seed_agreed = dist_.world() > 1
        seed = self.seed_for(step)
        kind = "fsdp" if dist_.is_fsdp(model) else "ddp" if dist_.is_ddp(model) else "local"
        error: BaseException | None = None
        grown = grown_opt = template = None
        digest = ""
        try:
            if kind == "fsdp":
                template = self._template if self._template is not None else self.build()
                plain, plain_opt = dist_.gather_fsdp(model, optimizer, template)
                plain.train(model.training)
                grown, grown_opt = op.apply(
                    plain, plain_opt, seed=seed, inplace=True, **self.options
                )
            else:
                inner = model.module if kind == "ddp" else model
                grown, grown_opt = op.apply(
                    inner, optimizer, seed=seed, inplace=inplace and kind == "local", **self.options
                )
            if self.check_ranks and dist_.world() > 1:
                digest = dist_.digest(grown, grown_opt)
        except Exception as e:  # reported to every rank below
            error = e
        failures = dist_.gather(None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, msg) for r, msg in enumerate(failures) if msg is not None]
        if failed:
            if isinstance(error, AutogrowError):
                raise error
            r, msg = failed[0]
            raise GrowthError(
                f"growth {op!r} after step {step} failed on rank {r}: {msg}. Nothing was "
                "changed (on any rank)."
            ) from error
        digests = dist_.gather(digest)
        if len(set(digests)) > 1:
            raise GrowthError(
                f"growth {op!r} after step {step} gave different models on the ranks (digests "
                f"{digests}); nothing was changed. Growth must see the same model on every rank."
            )
        assert grown is not None
        if kind == "fsdp":
            template = dist_.meta_template(grown)  # before shard() changes grown in place
            new_model, new_opt = dist_.reshard_fsdp(grown, grown_opt, self.shard)
            self._template = template
        elif kind == "ddp":
            kw = dist_.ddp_kwargs(model)  # type: ignore[arg-type]
            new_model, new_opt = nn.parallel.DistributedDataParallel(grown, **kw), grown_opt
        else:
            new_model, new_opt = grown, grown_opt
        new_sched = carry_scheduler(scheduler, optimizer, new_opt) if new_opt else scheduler
        if self.lr_recipe is not None:  # a recipe of an earlier growth
            self.lr_recipe.remove()
            self.lr_recipe = None
        if new_opt is not None and self.lr != "keep":
            steps = {"rewarm": self.warmup, "decay": self.decay_steps}.get(self.lr)
            self.lr_recipe = recipe(new_opt, self.lr, steps=steps)
        self._done.add(step)
        if op is self.on_plateau and step not in self.schedule:
            self._plateau_growths += 1
            self._best, self._since = math.inf, 0
        self.history.append(GrowthEvent(step, op, seed, time.perf_counter() - start, digests[0]))
        return new_model, new_opt, new_sched
