"""The sizes the widening plan expects in the grown model's graph, checked op by op.

The structure check (:mod:`autogrow.transforms.structure`) re-traces the widened model and
matches its ops one to one with the original's. Ops and constants must be the same; sizes may
change, but only as the plan says: a wrong attribute update (``num_heads`` kept while
``sr_ratio``, which held the same value, was taken for it) runs the same ops on other sizes
and would pass a check that lets every integer change. :class:`PlannedSizes` holds, per op of
the original graph,

* each literal size the rules recorded (:class:`~autogrow.rules.context.LiteralSize`, a
  ``view``'s head count, a ``split``'s sizes): the grown op must be given the size of its axis
  after widening;
* each tensor the op returns (torch.export records shapes on every node; a symbolic fx trace has
  none): every axis must have its size after widening, an axis in a widened group the group's
  new size, any other axis its old size.

Both come from the analysis the plan was made from, so checking costs one walk over the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from ..axes import Term
from ..rules import TensorValue
from ..rules.context import Analysis
from .attributes import size_leaves


class PlannedSizes:
    """``planned(old, new)``: what is wrong with the sizes of ``new``, the grown graph's op
    matched with ``old`` of the analysed graph, or None. ``size`` maps an axis term to its size
    after widening."""

    def __init__(self, analysis: Analysis, size: Callable[[Term], int]) -> None:
        self.analysis, self.size = analysis, size
        self.at: dict[fx.Node, dict[int, int]] = {}  # literal at a known position
        self.anywhere: dict[fx.Node, list[tuple[int, int]]] = {}  # (old, new), position unknown
        for lit in analysis.literals:
            if not isinstance(lit.value, int):
                continue
            node = lit.call.node
            if lit.index is not None:
                self.at.setdefault(node, {})[lit.index] = size(lit.term)
            elif size(lit.term) != lit.value:
                self.anywhere.setdefault(node, []).append((lit.value, size(lit.term)))

    def __call__(self, old: fx.Node, new: fx.Node) -> str | None:
        wrong = self._literals(old, new)
        if wrong is None:
            wrong = self._shapes(self.analysis.values.get(old), new.meta.get("val"))
        if wrong is None:
            return None
        call = self.analysis.calls.get(old)
        op = call.where(full=True) if call is not None else f"op {new.name!r}"
        return f"{op} {wrong}"

    def _literals(self, old: fx.Node, new: fx.Node) -> str | None:
        planned, loose = self.at.get(old), self.anywhere.get(old)
        if planned is None and loose is None:
            return None
        leaves = size_leaves(new)
        for index, want in (planned or {}).items():
            got = leaves[index] if index < len(leaves) else None
            if type(got) is int and got != want:
                return f"is given the size {got} where the plan needs {want}"
        for was, want in loose or []:
            if want not in leaves:
                return f"is given no size {want} (its literal {was} should have become {want})"
        return None

    def _shapes(self, value: Any, val: Any) -> str | None:
        if isinstance(value, TensorValue):
            if not isinstance(val, torch.Tensor) or val.ndim != len(value.terms):
                return None
            want = tuple(self.size(t) for t in value.terms)
            got = tuple(val.shape)
            if all(type(s) is int for s in got) and got != want:
                return f"returns a tensor of shape {list(got)} where the plan needs {list(want)}"
            return None
        if isinstance(value, (list, tuple)) and isinstance(val, (list, tuple)):
            if len(value) == len(val):
                for v, m in zip(value, val):
                    if (wrong := self._shapes(v, m)) is not None:
                        return wrong
        return None
