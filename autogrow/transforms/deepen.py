"""Net2DeeperNet: the public names, kept importable from here; the code is in
:mod:`autogrow.transforms.depth`.

>>> from autogrow.transforms.deepen import InsertionKind, InsertionPoint
>>> InsertionPoint("fc1", "block", "", True).kind is InsertionKind.BLOCK
True
"""

from __future__ import annotations

from .depth import (
    After,
    DeepenPlan,
    InsertionKind,
    InsertionPoint,
    deepen,
    deepen_with_plan,
    insertion_points,
)

__all__ = [
    "After",
    "DeepenPlan",
    "InsertionKind",
    "InsertionPoint",
    "deepen",
    "deepen_with_plan",
    "insertion_points",
]
