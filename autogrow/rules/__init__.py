"""Per-op rules. Importing this package registers the built-in rules in ``default_registry``.

To support a new op, add one function to the module of its family (or a new module imported
here); to support your own module type, see :func:`autogrow.register_module_rule`.
"""

from . import attention, elementwise, linear, norm, reduce, shape, torchvision_ops  # noqa: F401
from .registry import Call, Dynamic, ParamRef, RuleRegistry, TensorValue, default_registry

__all__ = ["Call", "Dynamic", "ParamRef", "RuleRegistry", "TensorValue", "default_registry"]
