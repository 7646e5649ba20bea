"""Moved to :mod:`autogrow.adapters.transformers` (the transformers :class:`ModelAdapter`);
this name is kept so that old imports keep working."""

from ..adapters.transformers import *  # noqa: F403
from ..adapters.transformers import (  # noqa: F401 - the old module's public functions
    apply_config,
    constrain,
    grown_config,
    inference_settings,
    is_hf_model,
    layer_stacks,
    sync_layer_count,
)
