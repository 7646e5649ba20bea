"""The exceptions autogrow raises.

Every refusal is an :class:`AutogrowError` subclass whose message names the op, the module
(qualified name) and, where the tracer recorded it, the source line, and says what to do.
"""

from __future__ import annotations


class AutogrowError(Exception):
    """Base class of every error autogrow raises on purpose."""


class InvalidArgumentError(AutogrowError, ValueError):
    """An argument is malformed: a factor <= 1 or NaN, a non-Module, a bad option value."""


class TracingError(AutogrowError):
    """Neither torch.fx symbolic tracing nor torch.export could capture the model."""


class ExampleInputsError(AutogrowError):
    """Example inputs were not given and cannot be inferred from the model's entry layer."""


class UnsupportedOpError(AutogrowError):
    """A width group that must change passes through an op autogrow has no rule for."""


class HardcodedSizeError(AutogrowError):
    """Forward code hard-codes a size (``x.view(-1, 400)``) that widening would change."""


class ConstraintError(AutogrowError):
    """A requested width cannot satisfy the group's constraints."""


class FrozenGroupError(ConstraintError):
    """A width change was requested for a group that is frozen (model input/output, ...)."""


class GroupNotFoundError(ConstraintError, KeyError):
    """A key of the ``factor`` dict names neither a width group nor a module in one."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VerificationError(AutogrowError):
    """The transformed model's outputs differ from the original's beyond the tolerance."""
