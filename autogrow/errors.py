"""The exceptions and warnings autogrow raises.

Every refusal is an :class:`AutogrowError` subclass whose message names the op, the module
(qualified name) and, where the tracer recorded it, the source line, and says what to do.
A growth that succeeds only in part is reported by a :class:`GrowthWarning`.
"""

from __future__ import annotations

import os
import sys
import warnings


class AutogrowError(Exception):
    """Base class of every error autogrow raises on purpose.

    Catch it to handle any refusal (the message says what failed, where, and what to do):

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> try:
    ...     autogrow.widen(net, 0.5)
    ... except autogrow.AutogrowError as e:
    ...     print(type(e).__name__, isinstance(e, ValueError))
    InvalidArgumentError True
    """


class InvalidArgumentError(AutogrowError, ValueError):
    """An argument is malformed: a factor <= 1 or NaN, a non-Module, a bad option value.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> autogrow.widen(net, 2.0, symmetry="mirror")
    Traceback (most recent call last):
    ...
    autogrow.errors.InvalidArgumentError: symmetry must be one of ('split', ...), got 'mirror'
    """


class TracingError(AutogrowError):
    """Neither torch.fx symbolic tracing nor torch.export could capture the model.

    Typically ``forward`` branches on tensor *values* (``if x.sum() > 0:``); branching on
    shapes is fine. The message gives both tracers' reasons:

    ```python
    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else x

    autogrow.analyze(Gate(), (torch.randn(1, 2),))
    # TracingError: cannot trace Gate.
    #   torch.fx symbolic_trace failed: TraceError: symbolically traced variables cannot be
    #   used as inputs to control flow
    #   torch.export fallback failed: GuardOnDataDependentSymNode: ...
    ```
    """


class ExampleInputsError(AutogrowError):
    """Example inputs were not given and cannot be inferred from the model's entry layer, or
    the model cannot run on the inferred ones (the message says what was inferred, from which
    layer).

    >>> import torch, autogrow
    >>> try:
    ...     autogrow.analyze(torch.nn.Sequential(torch.nn.ReLU()))
    ... except autogrow.ExampleInputsError as e:
    ...     print(str(e).split(":")[0])
    cannot infer example inputs for Sequential
    """


class UnsupportedOpError(AutogrowError):
    """A width group that must change passes through an op autogrow has no rule for.

    Exported for this purpose; this version freezes the groups an op without a rule touches
    (listed in ``analyze(model).blocked``), so a request for them raises
    :class:`FrozenGroupError` instead:

    ```python
    try:
        autogrow.widen(model, {"fc1": 128})
    except (autogrow.UnsupportedOpError, autogrow.FrozenGroupError) as e:
        print(e)  # names the op, the module and the source line; register a rule for it
    ```
    """


class HardcodedSizeError(AutogrowError):
    """Forward code hard-codes a size (``x.view(-1, 400)``) that widening would change.

    >>> import torch, autogrow
    >>> class Flat(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(144, 2)
    ...     def forward(self, x):
    ...         return self.fc(self.conv(x).view(-1, 144))
    >>> try:
    ...     autogrow.widen(Flat(), 2.0, example_inputs=(torch.randn(1, 3, 8, 8),))
    ... except autogrow.HardcodedSizeError as e:
    ...     print("hard-codes the size 144" in str(e))
    True
    """


class ConstraintError(AutogrowError):
    """A requested width cannot satisfy the group's constraints.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> try:
    ...     autogrow.widen(net, {"0": 6})
    ... except autogrow.ConstraintError as e:
    ...     print(e)
    '0': new width 6 is smaller than the current 8; autogrow only grows
    """


class FrozenGroupError(ConstraintError):
    """A width change was requested for a group that is frozen (model input/output, ...).

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> try:
    ...     autogrow.widen(net, {"2": 4})  # the output layer's group: the number of classes
    ... except autogrow.FrozenGroupError as e:
    ...     print(str(e).split(".")[0])
    group '2' (requested as '2', modules 2) is frozen: model output
    """


class GroupNotFoundError(ConstraintError, KeyError):
    """A key of the ``factor`` dict names neither a width group nor a module in one.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> try:
    ...     autogrow.widen(net, {"nope": 16})
    ... except autogrow.GroupNotFoundError as e:
    ...     print(str(e).split(".")[0])
    'nope' names no width group and no module with parameters in one
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VerificationError(AutogrowError):
    """The transformed model's outputs differ from the original's beyond the tolerance.

    Raised by ``widen``/``deepen`` with ``verify=True`` (the model is then left unchanged);
    a wrong user rule is the usual cause:

    ```python
    try:
        wide = autogrow.widen(model, 2.0, registry=my_registry)
    except autogrow.VerificationError as e:
        print(e)  # the widened model differs from the original: max relative error ...
    ```
    """


class StructureError(VerificationError):
    """The grown model's forward would take another path than the original's.

    Found by tracing the grown model again and comparing its graph with the original's:
    forward code that branches on a size (``if x.size(1) != self.filters:``), unpacks a
    container (``a, b = self.blocks``) or reads an attribute of a container's last module
    would make the grown model compute another function, or fail to run. Raised with or
    without ``verify`` (with it, to explain outputs that differ: a VerificationError whose
    cause is found); the model is then left unchanged.

    ```python
    try:
        deep = autogrow.deepen(model, verify=False)
    except autogrow.StructureError as e:
        print(e)  # the deepened model no longer traces: ValueError: too many values ...
    ```
    """


class GrowthWarning(UserWarning):
    """``widen`` with a float factor grew only some groups as asked.

    Emitted once per call, after the growth succeeded, listing each group kept at its width
    (or grown less), its width, what it grew to and why: a GroupNorm-normalised (uniform)
    group grows by whole multiples only (as does a LayerNorm/RMSNorm-normalised one that
    filled units do not fit, docs/widen.md), groups normalised together share one
    integer factor, a size tie or an op without a rule freezes it. The model returned still
    computes the same function. ``WidthGraph.max_factor`` answers the same question
    before widening.

    >>> import warnings, torch, autogrow
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(1, 8), nn.Linear(8, 16), nn.ReLU(),
    ...                     nn.Linear(16, 2))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     wide = autogrow.widen(net, 1.5, seed=0)
    >>> [type(w.message).__name__ for w in caught]
    ['GrowthWarning']
    >>> lines = str(caught[0].message).splitlines()
    >>> print(lines[0])
    widen with factor 1.5 grew 1 of 2 widenable groups; these kept their width or grew less:
    >>> print(lines[1].split(";")[0].replace(" (op 'group_norm' in module '1')", ""))
      0: width 8 kept (x1.5 asks 12): uniform: grows by whole multiples only

    Silence it with ``warnings.filterwarnings("ignore", category=autogrow.GrowthWarning)``.
    """


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_growth(message: str) -> None:
    """Emit a :class:`GrowthWarning` attributed to the first caller outside autogrow.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_growth("kept: a")
    >>> caught[0].category.__name__, str(caught[0].message)
    ('GrowthWarning', 'kept: a')
    """
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, GrowthWarning, stacklevel=level)
