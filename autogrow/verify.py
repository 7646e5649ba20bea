"""Measuring that a transformed model computes the original function (eval mode).

The check passes when every output's max relative error (:func:`relative_error`) is at most
the tolerance. By default the tolerance follows the precision the model computes in
(:func:`default_tolerance`): 1e-4 for float32 and float64, ``8 × eps`` for float16 (7.8e-3) and
bfloat16 (0.0625), since a wider or deeper model rounds differently from the original in
those dtypes. ``widen``/``deepen`` take ``tolerance=`` to override it.
"""

from __future__ import annotations

import linecache
import math
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import InvalidArgumentError, VerificationError
from .tracing.trace import eval_mode, flatten_output

TOLERANCE = 1e-4
"""The tolerance for float32 and float64 models, and the floor of :func:`default_tolerance`."""

EPS_FACTOR = 8
"""``k`` in ``max(1e-4, k × torch.finfo(dtype).eps)`` (see :func:`default_tolerance`)."""


def default_tolerance(dtype: torch.dtype) -> float:
    """The default max relative error for a model computing in ``dtype``.

    ``max(1e-4, 8 × torch.finfo(dtype).eps)``: 1e-4 for float32 and float64 (8 × eps is far
    below it), 8 × 2**-10 = 7.8e-3 for float16 and 8 × 2**-7 = 0.0625 for bfloat16. In half
    precision the grown model sums more (or differently split) terms than the original, and
    both round each result to the dtype, so their outputs differ by a few eps even when the
    growth is exact: measured 0.5-2.6 eps for ``widen(×2)`` on MLPs, CNNs with BatchNorm,
    resnet18, vgg11_bn, mobilenet_v2 and 2- to 32-layer Llamas, and 4 eps on a bfloat16
    1.1B-parameter Llama (docs/widen.md); 8 leaves a margin of 2 over that largest reading.
    Wrong rules tried erred far more (softmax as elementwise 0.22-0.28, shares not divided
    0.56-0.96), but an error below the tolerance passes for rounding: for a finer check, grow
    a float32 copy. 8-bit float dtypes get a tolerance of 1 or more, which proves little: pass
    ``tolerance=``.

    >>> from autogrow.verify import default_tolerance
    >>> [default_tolerance(d) for d in (torch.float32, torch.float16, torch.bfloat16)]
    [0.0001, 0.0078125, 0.0625]
    """
    return max(TOLERANCE, EPS_FACTOR * torch.finfo(dtype).eps)


def compute_dtype(model: nn.Module, reference: Any) -> torch.dtype:
    """The least precise floating dtype among ``model``'s parameters and buffers and the outputs.

    The parameters count too: a float16 model whose head casts to float32 still rounds in
    float16. float32 when there is no floating tensor at all.

    >>> net = torch.nn.Linear(2, 2).half()
    >>> compute_dtype(net, net(torch.ones(1, 2, dtype=torch.float16)).float())
    torch.float16
    """
    tensors = [*model.parameters(), *model.buffers(), *flatten_output(reference)]
    dtypes = {t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return max(dtypes, key=lambda d: torch.finfo(d).eps, default=torch.float32)


def check_tolerance(tolerance: Any) -> None:
    """Raise InvalidArgumentError unless ``tolerance`` is None or a number >= 0 (not NaN).

    >>> check_tolerance(-1.0)
    Traceback (most recent call last):
    ...
    autogrow.errors.InvalidArgumentError: tolerance must be None or a number >= 0, got -1.0
    """
    if tolerance is None:
        return
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        ok = False
    else:
        ok = not math.isnan(tolerance) and tolerance >= 0
    if not ok:
        raise InvalidArgumentError(f"tolerance must be None or a number >= 0, got {tolerance!r}")


@dataclass
class Comparison:
    """Per-output max relative error: max|new - old| / max|old| (0 where both are zero)."""

    errors: list[float]

    @property
    def max_error(self) -> float:
        return max(self.errors, default=0.0)

    @property
    def worst(self) -> int:
        return max(range(len(self.errors)), key=self.errors.__getitem__) if self.errors else -1


def run(model: nn.Module, inputs: tuple) -> Any:
    """The model's own forward on ``inputs``, in eval mode, without autograd; flags restored."""
    with eval_mode(model), torch.no_grad():
        return model(*inputs)


def relative_error(new: torch.Tensor, old: torch.Tensor) -> float:
    if new.shape != old.shape:
        return float("inf")
    if not new.is_floating_point() and not new.is_complex():
        return 0.0 if torch.equal(new, old) else float("inf")
    new64, old64 = new.detach().double(), old.detach().double()
    same_nonfinite = ~torch.isfinite(old64) & (new64 == old64) | (old64.isnan() & new64.isnan())
    diff = (new64 - old64).abs().masked_fill(same_nonfinite, 0.0)
    scale = old64.abs().masked_fill(~torch.isfinite(old64), 0.0).max() if old64.numel() else 0
    peak = diff.max().item() if diff.numel() else 0.0
    if peak == 0.0:
        return 0.0
    return float(peak / scale) if scale > 0 else float("inf")


def compare(new_output: Any, reference: Any) -> Comparison:
    new, old = flatten_output(new_output), flatten_output(reference)
    if len(new) != len(old):
        return Comparison([float("inf")])
    return Comparison([relative_error(a, b) for a, b in zip(new, old)])


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


@dataclass
class Failure:
    """Where a model's forward raised: the innermost of its modules and the model's own line.

    ``module`` is the qualified name of the innermost submodule of the model whose code was
    running (None if the error came from the top-level forward), ``source`` the innermost
    frame outside the torch package, as ``'file.py:12: code'`` (None if there is none).
    """

    module: str | None
    module_type: str | None
    source: str | None


def locate_failure(model: nn.Module, error: BaseException) -> Failure:
    """The innermost module of ``model`` and the innermost non-torch line on ``error``'s
    traceback (found from the frames' ``self``; nothing is recorded while the model runs).

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(6, 2))
    >>> try:
    ...     net(torch.ones(1, 4))
    ... except RuntimeError as e:
    ...     failure = locate_failure(net, e)
    >>> failure.module, failure.module_type
    ('1', 'Linear')
    """
    names = {id(m): n for n, m in model.named_modules()}
    module = source = None
    for frame, line in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            module = owner
        path = os.path.abspath(frame.f_code.co_filename)
        if not path.startswith(_TORCH_DIR) and path != os.path.abspath(__file__):
            code = linecache.getline(path, line).strip()
            source = f"{path}:{line}: {code}" if code else f"{path}:{line}"
    if module is None:
        return Failure(None, None, source)
    return Failure(names[id(module)] or None, type(module).__name__, source)


def _failure_message(
    what: str,
    model: nn.Module,
    error: BaseException,
    describe_module: Callable[[str], str | None] | None,
) -> str:
    failure = locate_failure(model, error)
    text = str(error).splitlines()[0] if str(error) else ""
    where = ""
    if failure.module is not None:
        where = f" Raised in module {failure.module!r} ({failure.module_type})"
        about = describe_module(failure.module) if describe_module is not None else None
        if about:
            where += f", {about}"
        where += "."
    elif failure.module_type is not None:
        where = f" Raised in the model's own forward ({failure.module_type})"
        about = describe_module("") if describe_module is not None else None
        where += f", {about}." if about else "."
    if failure.source:
        where += f" The model's line: {failure.source}."
    return (
        f"the {what} model failed to run on the example inputs: {type(error).__name__}: "
        f"{text.rstrip('.')}.{where} This usually means forward code depends on a size "
        "autogrow could not see (a literal or a module attribute); please report it with the "
        "model's forward code. Nothing was returned."
    )


def verify(
    model: nn.Module,
    inputs: tuple,
    reference: Any,
    *,
    what: str,
    tolerance: float | None = None,
    describe_module: Callable[[str], str | None] | None = None,
) -> Comparison:
    """Run ``model`` and raise VerificationError unless it matches ``reference``.

    ``tolerance`` bounds every output's max relative error; None means
    ``default_tolerance(compute_dtype(model, reference))``: 1e-4 in float32/float64, 8 × the
    dtype's eps in half precision. The message names the tolerance, where it came from and how
    to change it, and calls the difference a bug only beyond what the dtype's rounding explains.

    When the model fails to run, the message names the innermost of its modules whose code
    raised, and the innermost line outside torch (:func:`locate_failure`);
    ``describe_module(name)``, when given, adds what the transform knows of that module (the
    width groups it is in) to the message.

    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(6, 2))
    >>> try:
    ...     verify(net, (torch.ones(1, 4),), None, what="widened",
    ...            describe_module=lambda name: f"in width group {name!r}")
    ... except VerificationError as e:
    ...     print(str(e).split(". ")[1])
    Raised in module '1' (Linear), in width group '1'
    """
    try:
        output = run(model, inputs)
    except Exception as e:  # noqa: BLE001 - a model that cannot run is a failed verification
        raise VerificationError(_failure_message(what, model, e, describe_module)) from e
    if any(r.numel() > 1 and bool((r == r.flatten()[0]).all()) for r in flatten_output(reference)):
        warnings.warn(
            "the original model's output is constant on the example inputs (a zero-initialised "
            "head?), so comparing outputs proves little; use trained weights or other inputs",
            stacklevel=3,
        )
    result = compare(output, reference)
    dtype = compute_dtype(model, reference)
    limit = default_tolerance(dtype) if tolerance is None else tolerance
    if not result.max_error <= limit:
        raise VerificationError(_message(what, result, dtype, tolerance))
    return result


def measure(
    model: nn.Module,
    inputs: tuple,
    reference: Any,
    *,
    what: str,
    describe_module: Callable[[str], str | None] | None = None,
) -> Comparison:
    """Run ``model`` and measure how far its outputs are from ``reference`` (no tolerance):
    for transforms that change the function on purpose (``autogrow.stack``).

    Raises VerificationError, naming the module that raised as :func:`verify` does, when the
    model fails to run, or when its outputs do not have the reference's number and shapes.

    >>> net = torch.nn.Linear(2, 2)
    >>> x = (torch.ones(1, 2),)
    >>> ref = run(net, x)
    >>> with torch.no_grad():
    ...     _ = net.weight.mul_(2)
    >>> measure(net, x, ref, what="stacked").max_error > 0
    True
    """
    try:
        output = run(model, inputs)
    except Exception as e:  # noqa: BLE001 - a model that cannot run is a failed check
        raise VerificationError(_failure_message(what, model, e, describe_module)) from e
    new, old = flatten_output(output), flatten_output(reference)
    shapes = [tuple(t.shape) for t in new]
    expected = [tuple(t.shape) for t in old]
    if shapes != expected:
        raise VerificationError(
            f"the {what} model's outputs have shapes {shapes}, not the original's {expected}: "
            "the copied layers do not fit where they were put. Nothing was returned."
        )
    return compare(output, reference)


def _message(what: str, result: Comparison, dtype: torch.dtype, tolerance: float | None) -> str:
    name = str(dtype).removeprefix("torch.")
    default = default_tolerance(dtype)
    eps = torch.finfo(dtype).eps
    if default == TOLERANCE:
        rule = f"the default for {name}"
    else:
        rule = f"the default for {name}: {EPS_FACTOR} × its eps {eps:.3g}"
    used = (
        f"tolerance {default:.3g}, {rule}"
        if tolerance is None
        else f"tolerance={tolerance:g} as given; the default for {name} is {default:.3g}"
    )
    fn = {"widened": "widen", "deepened": "deepen"}.get(what, "widen/deepen")
    error = result.max_error
    head = (
        f"the {what} model differs from the original: output {result.worst} has max relative "
        f"error {error:.3g} ({used}). Nothing was returned."
    )
    if error <= default:
        return (
            f"{head} This is within {name} rounding (the default tolerance for {name}), not a "
            f"sign of a wrong growth: pass a larger tolerance= to {fn} (or leave it out)."
        )
    if default == TOLERANCE:
        return (
            f"{head} That is more than {name} rounding explains: this is an autogrow bug or an "
            "op whose rule is wrong, please report it. To accept it anyway, pass a larger "
            f"tolerance= to {fn} (docs/widen.md#verification-and-tolerance)."
        )
    return (
        f"{head} That is {error / eps:.3g} × {name}'s eps, more than {name} rounding explains "
        "in the models measured (up to 4 eps): this is an autogrow bug or an op whose rule is "
        "wrong, please report it. Only if the model is much deeper or wider than those, pass a "
        f"larger tolerance= to {fn}, or grow a float32 copy (copy.deepcopy(model).float(), "
        "checked at 1e-4) and cast the result back (docs/widen.md#verification-and-tolerance)."
    )
