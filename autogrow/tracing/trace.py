"""Capturing a model as an fx graph with shapes: torch.fx first, torch.export as the fallback.

Both tracers give an fx ``Graph``; what differs is how parameters appear (``get_attr`` nodes or
lifted placeholders) and where shapes come from (our own run, or export's fake values). A
:class:`Traced` hides that difference from everything downstream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from ..adapters import adapter_for
from ..errors import ExampleInputsError, TracingError
from .inputs import InferredInputs


class TracerKind(str, Enum):
    """Which tracer produced a graph (a ``str`` enum: ``TracerKind.FX == "fx"``)."""

    FX = "fx"  # torch.fx symbolic trace: module calls and Python-level ops, source lines known
    EXPORT = "export"  # torch.export (non-strict): ATen ops, every size specialised

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # shown like the plain string it equals
        return repr(self.value)


@dataclass(frozen=True)
class TensorMeta:
    """What shape propagation remembers of a tensor value."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class Traced:
    """A traced model: graph, which nodes are parameters, and every node's value metadata."""

    model: nn.Module
    graph: fx.Graph
    kind: TracerKind
    param_nodes: dict[fx.Node, str]  # node -> qualified name of a parameter or buffer
    user_inputs: list[fx.Node]
    meta: dict[fx.Node, Any] = field(default_factory=dict)
    reference_output: Any = None  # the model's eval-mode output, when the trace computed it
    leaf_types: tuple[type, ...] = ()
    # Small integer constants the traced code wrote (``x[..., [-2], :]`` becomes an index
    # tensor lifted by torch.export): rules that pick positions read which ones.
    constants: dict[fx.Node, torch.Tensor] = field(default_factory=dict)
    _traces: dict[str, str] | None = field(default=None, repr=False)

    def source_of(self, node: fx.Node) -> str | None:
        """'file.py:12: code' where the op was written. Recording stack traces makes fx
        tracing several times slower, so for fx they are recorded by a second trace, once,
        when a message first needs one (node names are deterministic)."""
        text = node.meta.get("stack_trace")
        if text is None and self.kind == TracerKind.FX:
            if self._traces is None:
                try:
                    graph = _Tracer(self.leaf_types, record_stack_traces=True).trace(self.model)
                    self._traces = {n.name: n.meta.get("stack_trace") for n in graph.nodes}
                except Exception:  # noqa: BLE001 - a message without a line is still a message
                    self._traces = {}
            text = self._traces.get(node.name)
        return parse_stack_trace(text) if text else None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards (and run
    with the model's adapter's inference settings, e.g. no KV cache for transformers models,
    whose cache could be neither traced nor compared)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with adapter_for(model).inference_context(model):
            yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def describe(value: Any) -> Any:
    """Replace tensors by their TensorMeta, keep plain Python values, drop everything else."""
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(int(s) for s in value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return (
            type(value)(describe(v) for v in value)
            if not _is_namedtuple(value)
            else tuple(describe(v) for v in value)
        )
    if isinstance(value, dict):
        return {k: describe(v) for k, v in value.items()}
    if value is None or isinstance(value, (int, float, bool, str, torch.dtype, torch.device)):
        return value
    if isinstance(value, torch.Size):
        return tuple(value)
    return None


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


_INTERNAL_PATHS = (
    "/torch/fx/",
    "/torch/nn/modules/module.py",
    "/torch/_",
    "/torch/export/",
    "/torch/overrides.py",
    "/torch/nn/functional.py",
)


# the attributes fx stows constants in on the traced root (Tracer.get_fresh_qualname)
_STOWED = re.compile(r"_(tensor_constant|torchbind_obj|tree_spec_constant)\d+")
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _internal(frame: str) -> bool:
    """Whether a 'File "...", line N, in f' line is torch's own code, not the model's."""
    path = frame[5:].split(",")[0].strip().strip(chr(34))
    return path.startswith(_TORCH_DIR) or any(p in frame for p in _INTERNAL_PATHS)


def parse_stack_trace(trace: str) -> str | None:
    """'file.py:12: x = x.view(-1, 400)': the innermost user frame of a recorded trace.

    Frames inside the torch package (``torch.split`` is Python code in torch/functional.py)
    are skipped, so the line is the model's. A line that opens more parentheses than it
    closes (a call continued on the next lines) is shown as ``code ...)``.

    >>> parse_stack_trace('''File "/src/net.py", line 12, in forward
    ...     a, b = torch.split(x, [4, 4])
    ... File "%sfunctional.py", line 165, in split
    ...     return handle_torch_function(''' % _TORCH_DIR)
    '/src/net.py:12: a, b = torch.split(x, [4, 4])'
    >>> parse_stack_trace('File "/src/net.py", line 3, in forward\\n  y = torch.cat((a, b),')
    '/src/net.py:3: y = torch.cat((a, b), ...)'
    """
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    frames = []
    for i, ln in enumerate(lines):
        if ln.startswith("File "):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            frames.append((ln, "" if nxt.startswith("File ") else nxt))
    user = [f for f in frames if not _internal(f[0])]
    if not user:
        return None
    where, code = user[-1]
    unclosed = code.count("(") - code.count(")")
    if unclosed > 0:
        code = f"{code} ...{')' * unclosed}"
    parts = where.split(",")
    loc = f"{parts[0][5:].strip().strip(chr(34))}:{parts[1].strip().removeprefix('line ')}"
    return f"{loc}: {code}" if code else loc


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], record_stack_traces: bool = False) -> None:
        super().__init__()
        self.record_stack_traces = record_stack_traces
        self._leaf_types = leaf_types
        self.stowed: dict[str, Any] = {}

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """fx's trace, then takes back the constants fx stows on ``root`` as attributes
        (``_tensor_constant0``, ...; kept in ``stowed``): the caller's model is left as it was,
        and every trace numbers its constants from 0, so two traces of one model name their
        nodes alike (probes and second traces for source lines compare node names)."""
        before = set(vars(root)) if isinstance(root, nn.Module) else None
        try:
            return super().trace(root, concrete_args)
        finally:
            if before is not None:
                added = [k for k in vars(root) if k not in before and _STOWED.fullmatch(k)]
                self.stowed = {k: vars(root).pop(k) for k in added}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if parametrize.is_parametrized(m):  # its weight is computed (weight norm): trace it
            return False
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


class _MetaRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.meta: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.meta[n] = describe(result)
        return result


class _Recording(nn.Module):
    """Lets ``functional_call`` substitute meta tensors for the graph's parameters."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm
        self.recorder = _MetaRecorder(gm)

    def forward(self, *args: Any) -> Any:
        return self.recorder.run(*args)


def _meta_run(gm: fx.GraphModule, inputs: tuple) -> dict[fx.Node, Any] | None:
    """Shapes from a run on meta tensors (no arithmetic); None if an op cannot run on meta."""
    wrapper = _Recording(gm)
    state = {
        f"gm.{k}": torch.empty_like(v, device="meta")
        for k, v in [
            *gm.named_parameters(remove_duplicate=False),
            *gm.named_buffers(remove_duplicate=False),
        ]
    }
    meta_inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    try:
        torch.func.functional_call(wrapper, state, meta_inputs, strict=False, tie_weights=True)
    except Exception:  # noqa: BLE001 - data-dependent code, a missing meta kernel ...
        return None
    return wrapper.recorder.meta


def trace_fx(
    model: nn.Module, inputs: tuple, leaf_types: tuple[type, ...] = (), reference: bool = True
) -> Traced:
    """Symbolically trace ``model`` and record every node's value by running it in eval mode.

    With ``reference`` the run is real and its output is kept for verification; without, it
    runs on meta tensors (2 to 5 times cheaper than a forward pass), or for real where an op
    cannot. The caller's parameters are never replaced: meta copies are passed in.
    """
    tracer = _Tracer(leaf_types)
    graph = tracer.trace(model)
    try:  # the GraphModule copies the stowed constants from the model: lend them for that
        vars(model).update(tracer.stowed)
        gm = fx.GraphModule(model, graph)
    finally:
        for k in tracer.stowed:
            vars(model).pop(k, None)
    recorder = _MetaRecorder(gm)
    output = None
    with eval_mode(model), torch.no_grad():
        meta = None if reference else _meta_run(gm, inputs)
        if meta is not None:
            recorder.meta = meta
        else:
            output = recorder.run(*inputs)
    params: dict[fx.Node, str] = {}
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    for node in graph.nodes:
        if node.op == "get_attr" and node.target in names:
            params[node] = str(node.target)
    user_inputs = [n for n in graph.nodes if n.op == "placeholder"]
    return Traced(
        model, graph, TracerKind.FX, params, user_inputs, recorder.meta, output, leaf_types
    )


def trace_export(model: nn.Module, inputs: tuple) -> Traced:
    """Capture ``model`` with ``torch.export`` (non-strict); shapes come from its fake values."""
    with eval_mode(model):
        ep = torch.export.export(model, inputs, strict=False)
    graph = ep.graph_module.graph
    by_name = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    params: dict[fx.Node, str] = {}
    user_inputs: list[fx.Node] = []
    constants: dict[fx.Node, torch.Tensor] = {}
    for spec in ep.graph_signature.input_specs:
        node = by_name.get(getattr(spec.arg, "name", ""))
        if node is None:
            continue
        if spec.kind.name in ("PARAMETER", "BUFFER") and spec.target is not None:
            params[node] = spec.target
        else:
            user_inputs.append(node)
            value = ep.constants.get(spec.target) if spec.target is not None else None
            if _small_int_constant(value):
                constants[node] = value
    meta = {n: describe(n.meta.get("val")) for n in graph.nodes}
    return Traced(
        model, graph, TracerKind.EXPORT, params, user_inputs, meta, None, constants=constants
    )


SMALL_CONSTANT = 4096  # elements: index lists written in code, never data


def _small_int_constant(value: object) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and not value.is_floating_point()
        and not value.is_complex()
        and value.numel() <= SMALL_CONSTANT
    )


DEBUG_ENV = "AUTOGROW_DEBUG"
"""Set this environment variable (``AUTOGROW_DEBUG=1``) to let torch's log and warnings
during tracing through; by default :func:`quiet_torch` holds them back."""


class _Hold(logging.Handler):
    def __init__(self, held: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.held = held

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.held.append(f"{record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a record that cannot format is dropped
            pass


@contextlib.contextmanager
def quiet_torch() -> Iterator[list[str]]:
    """Hold back what torch logs and warns while capturing a model (graph dumps, fake-tensor
    tracebacks, export's UserWarnings), so that a refusal is autogrow's one-line message and
    a success prints nothing. Yields the list the held lines go to. With the environment
    variable ``AUTOGROW_DEBUG`` set, nothing is held back.

    >>> import warnings
    >>> with quiet_torch() as held:
    ...     logging.getLogger("torch.export").warning("graph dump")
    ...     warnings.warn("was assigned during export")
    >>> held
    ['torch.export: graph dump', 'warning: was assigned during export']
    """
    held: list[str] = []
    if os.environ.get(DEBUG_ENV):
        yield held
        return
    hold = _Hold(held)
    loggers = [logging.getLogger("torch")] + [
        lg
        for name, lg in logging.Logger.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(lg, logging.Logger) and lg.handlers
    ]
    saved = [(lg, lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:  # a record reaches one of these first, then stops (no propagation)
        lg.handlers, lg.propagate = [hold], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield held
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        held.extend(f"warning: {w.message}" for w in caught)


def trace(
    model: nn.Module, inputs: tuple, leaf_types: tuple[type, ...] = (), reference: bool = True
) -> Traced:
    """Trace with torch.fx; fall back to torch.export where symbolic tracing cannot follow.
    ``reference``: also compute the model's eval-mode output (to verify against).

    torch's log and warnings are held back (:func:`quiet_torch`). When ``inputs`` were
    inferred (:class:`~autogrow.tracing.inputs.InferredInputs`) and neither tracer can run the
    model on them, the error is an ExampleInputsError saying what was inferred.
    """
    plain = tuple(inputs)  # torch.export's pytree does not know tuple subclasses
    with quiet_torch() as held:
        try:
            return trace_fx(model, plain, leaf_types, reference)
        except Exception as fx_error:  # noqa: BLE001 - any tracing failure sends us to the fallback
            try:
                return trace_export(model, plain)
            except Exception as export_error:  # noqa: BLE001
                failure = (
                    f"  torch.fx symbolic_trace failed: {_first_line(fx_error)}\n"
                    f"  torch.export fallback failed: {_first_line(export_error)}\n"
                )
                error = export_error
    log = (
        f" ({len(held)} lines of torch log and warnings held back: set {DEBUG_ENV}=1 to see them)"
        if held
        else ""
    )
    if isinstance(inputs, InferredInputs):
        raise ExampleInputsError(
            f"cannot run {type(model).__name__} on the example inputs autogrow inferred: "
            f"{inputs.origin}.\n{failure}"
            f"Pass example_inputs=(...) with the tensors forward() expects.{log}"
        ) from error
    raise TracingError(
        f"cannot trace {type(model).__name__}.\n{failure}"
        "Check that example_inputs match what forward() expects, and that forward has no "
        f"control flow on tensor values (shape-based control flow is fine for export).{log}"
    ) from error


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def flatten_output(output: Any) -> list[torch.Tensor]:
    """The tensors of a (possibly nested) model output, in a stable order."""
    if hasattr(output, "to_tuple"):  # Hugging Face ModelOutput
        output = output.to_tuple()
    leaves, _ = pytree.tree_flatten(output)
    return [x for x in leaves if isinstance(x, torch.Tensor)]
