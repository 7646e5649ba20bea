"""Identity-initialised layers; they now live in :mod:`autogrow.transforms.depth.identity`.

>>> from autogrow.transforms.identity import identity_linear
>>> identity_linear(2).weight.tolist()
[[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

from .depth.identity import identity_batchnorm, identity_conv, identity_linear, identity_prelu

__all__ = ["identity_batchnorm", "identity_conv", "identity_linear", "identity_prelu"]
