"""Net2DeeperNet for any model: zeroed residual blocks, or identity layers, then verify.

Two constructions, both exact in eval mode (see ``docs/deepen.md``):

* **block**: in a stage (an ``nn.Sequential``/``nn.ModuleList`` of blocks), a deepcopy of a
  shape-preserving block whose residual branch outputs zero: the branch's *last* Linear/Conv
  weight and bias are zeroed (and a BatchNorm right after it gets bias 0 and running mean 0),
  so ``block(x) = x`` while every weight still receives gradient. The branch ends are found by
  trying candidates on the block's recorded input, last registered first, and keeping the
  smallest set that makes the copy an identity; a block for which none does is not used.
* **identity**: after a module, a stack ``[Linear/Conv = I, BatchNorm = I (if the model uses
  BatchNorm), activation]``, where the activation is a copy of the module itself when it is an
  idempotent activation (ReLU, ReLU6, Hardtanh) and ``PReLU(init=1)`` otherwise.

The package, by concern: :mod:`.points` (insertion kinds and points), :mod:`.recorder` (one
recorded eval forward), :mod:`.branches` (residual blocks and their zero sets),
:mod:`.identity` (identity-initialised layers), :mod:`.stacks` (identity stacks after a
module), :mod:`.placement` (``after=`` resolved, the default placement, :class:`DeepenPlan`),
:mod:`.insert` (insertion into containers, and its undo) and :mod:`.api` (the public functions).
"""

from __future__ import annotations

from .api import DeepenTransform, deepen, deepen_with_plan, insertion_points
from .identity import identity_batchnorm, identity_conv, identity_linear, identity_prelu
from .placement import After, DeepenPlan
from .points import InsertionKind, InsertionPoint

__all__ = [
    "After",
    "DeepenPlan",
    "DeepenTransform",
    "InsertionKind",
    "InsertionPoint",
    "deepen",
    "deepen_with_plan",
    "identity_batchnorm",
    "identity_conv",
    "identity_linear",
    "identity_prelu",
    "insertion_points",
]
