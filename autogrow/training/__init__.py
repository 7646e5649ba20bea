"""Growing during training: :class:`Grower` and the growth operations (``autogrow.op``).

A layer between :mod:`autogrow.checkpoint` and :mod:`autogrow.integrations`: it uses the
transforms (widen, deepen, optimizer state) and torch.distributed, and names no training
library; the Hugging Face Trainer and Lightning callbacks in :mod:`autogrow.integrations`
drive a :class:`Grower` from inside those loops.
"""

from .grower import Grower, GrowthError, GrowthEvent
from .lr import Rewarm, carry_scheduler
from .ops import Deepen, Op, Stack, Widen, op

__all__ = [
    "Deepen",
    "GrowthError",
    "GrowthEvent",
    "Grower",
    "Op",
    "Rewarm",
    "Stack",
    "Widen",
    "carry_scheduler",
    "op",
]
