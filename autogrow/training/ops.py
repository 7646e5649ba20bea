"""Growth operations a :class:`~autogrow.training.Grower` applies: small frozen records.

``autogrow.op.widen(2.0)``, ``autogrow.op.deepen()`` and ``autogrow.op.stack(2)`` only record
the arguments; the grower calls :func:`autogrow.widen` / :func:`autogrow.deepen` /
:func:`autogrow.stack` with them (and with its seed and the
optimizer) when the schedule says so. Arguments are checked when the operation is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..transforms.mapping import SYMMETRIES
from ..transforms.paired_noise import DEFAULT_PAIR_NOISE, check_pair_noise

__all__ = ["OPS", "Deepen", "Op", "Stack", "Widen", "op"]


@dataclass(frozen=True)
class Widen:
    """``autogrow.widen(model, factor, symmetry=..., noise=..., pair_noise=...)`` at a
    scheduled step."""

    factor: float | Mapping[str, int | float]
    symmetry: str = "split"
    noise: float = 0.0
    pair_noise: float = DEFAULT_PAIR_NOISE

    def __post_init__(self) -> None:
        if isinstance(self.factor, Mapping):
            object.__setattr__(self, "factor", dict(self.factor))
        elif isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise InvalidArgumentError(
                f"op.widen: factor must be a number > 1 or a dict, got {self.factor!r}"
            )
        elif not math.isfinite(self.factor) or self.factor <= 1:
            raise InvalidArgumentError(f"op.widen: factor must be > 1, got {self.factor!r}")
        if self.symmetry not in SYMMETRIES:
            raise InvalidArgumentError(
                f"op.widen: symmetry must be one of {SYMMETRIES}, got {self.symmetry!r}"
            )
        if not (isinstance(self.noise, int | float) and self.noise >= 0):
            raise InvalidArgumentError(f"op.widen: noise must be >= 0, got {self.noise!r}")
        try:
            check_pair_noise(self.pair_noise)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"op.widen: {e}") from None

    def apply(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        seed: int,
        inplace: bool = False,
        **options: Any,
    ) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """Widen ``model`` (and ``optimizer``'s state); returns ``(model, optimizer)``."""
        from ..transforms.widen import widen

        kw = dict(
            seed=seed,
            symmetry=self.symmetry,
            noise=self.noise,
            pair_noise=self.pair_noise,
            inplace=inplace,
            **options,
        )
        if optimizer is None:
            return widen(model, self.factor, **kw), None
        return widen(model, self.factor, optimizer=optimizer, **kw)


@dataclass(frozen=True)
class Deepen:
    """``autogrow.deepen(model, after=..., n=...)`` at a scheduled step (deterministic)."""

    after: str | Sequence[str] | None = None
    n: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise InvalidArgumentError(f"op.deepen: n must be an int >= 1, got {self.n!r}")
        if isinstance(self.after, list):
            object.__setattr__(self, "after", tuple(self.after))

    def apply(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        seed: int,
        inplace: bool = False,
        **options: Any,
    ) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """Deepen ``model`` (and carry ``optimizer``); returns ``(model, optimizer)``."""
        from ..transforms.deepen import deepen

        after = list(self.after) if isinstance(self.after, tuple) else self.after
        kw = dict(after=after, n=self.n, inplace=inplace, **options)
        if optimizer is None:
            return deepen(model, **kw), None
        return deepen(model, optimizer=optimizer, **kw)


@dataclass(frozen=True)
class Stack:
    """``autogrow.stack(model, factor, order=..., stacks=...)`` at a scheduled step
    (deterministic; not function-preserving, so the grower's ``tolerance`` does not apply:
    the output change is measured, not bounded)."""

    factor: int = 2
    order: str = "repeat"
    stacks: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        from ..transforms.stack import check_stack_options

        try:
            check_stack_options(self.factor, self.order)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"op.{e}") from None
        if isinstance(self.stacks, list):
            object.__setattr__(self, "stacks", tuple(self.stacks))

    def apply(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        seed: int,
        inplace: bool = False,
        **options: Any,
    ) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """Stack ``model``'s layers (and copy ``optimizer``'s state); returns
        ``(model, optimizer)``."""
        from ..transforms.stack import stack

        options.pop("tolerance", None)  # bounds an exact transform's error; stacking changes
        stacks = list(self.stacks) if isinstance(self.stacks, tuple) else self.stacks
        kw = dict(order=self.order, stacks=stacks, inplace=inplace, **options)
        if optimizer is None:
            return stack(model, self.factor, **kw), None
        return stack(model, self.factor, optimizer=optimizer, **kw)


Op = Widen | Deepen | Stack
OPS = (Widen, Deepen, Stack)


class op:  # noqa: N801 - a namespace: autogrow.op.widen(...), autogrow.op.deepen(...)
    """Growth operations for :class:`autogrow.Grower` schedules.

    >>> import autogrow
    >>> autogrow.op.widen(2.0)
    Widen(factor=2.0, symmetry='split', noise=0.0, pair_noise=0.01)
    >>> autogrow.op.deepen(n=2)
    Deepen(after=None, n=2)
    >>> autogrow.op.stack(2)
    Stack(factor=2, order='repeat', stacks=None)
    """

    Widen = Widen
    Deepen = Deepen
    Stack = Stack

    @staticmethod
    def widen(
        factor: float | Mapping[str, int | float],
        *,
        symmetry: str = "split",
        noise: float = 0.0,
        pair_noise: float = DEFAULT_PAIR_NOISE,
    ) -> Widen:
        """Widen by ``factor`` (the arguments of :func:`autogrow.widen`; the grower's seed).

        >>> import autogrow
        >>> autogrow.op.widen({"0": 16}).factor
        {'0': 16}
        >>> autogrow.op.widen(2.0, symmetry="paired").symmetry
        'paired'
        """
        return Widen(factor, symmetry=symmetry, noise=noise, pair_noise=pair_noise)

    @staticmethod
    def deepen(after: str | Sequence[str] | None = None, *, n: int = 1) -> Deepen:
        """Deepen after ``after`` (the arguments of :func:`autogrow.deepen`).

        >>> import autogrow
        >>> autogrow.op.deepen("layers").after
        'layers'
        """
        return Deepen(after, n=n)

    @staticmethod
    def stack(
        factor: int = 2, *, order: str = "repeat", stacks: str | Sequence[str] | None = None
    ) -> Stack:
        """Stack the layer stacks ``factor`` times (the arguments of :func:`autogrow.stack`).

        >>> import autogrow
        >>> autogrow.op.stack(3, order="interleave").order
        'interleave'
        """
        return Stack(factor, order=order, stacks=stacks)
