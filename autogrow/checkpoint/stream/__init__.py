"""Growing checkpoints larger than memory: a checkpoint directory is read tensor by tensor
(``safetensors.safe_open``), grown by a plan made on the meta device, and written shard by
shard (docs/checkpoints-streaming.md).

:mod:`.source` reads and validates the directory, :mod:`.plan` plans on the meta device,
:mod:`.writer` writes shards atomically, :mod:`.lazy` and :mod:`.check` run both checkpoints
module by module to verify, and :mod:`.api` holds the public functions.
"""

from .api import StreamResult, deepen_checkpoint, widen_checkpoint

__all__ = ["StreamResult", "deepen_checkpoint", "widen_checkpoint"]
