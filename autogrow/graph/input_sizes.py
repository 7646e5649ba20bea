"""Literal sizes of an exported graph that forward code computed from its module's input.

``B, N, C = x.shape; v = self.v(x).reshape(B, N, self.num_heads, C // self.num_heads)``
exports as ``reshape(v, [1, 196, 4, 48])``. The attention rule grows the heads (the 4, an
attribute, follows them), but 48 follows the width of ``x``, another group: heads grown
while ``x`` keeps its width (or grows by another factor) give a model that no longer runs.
Where fx, tracing the module alone, shows such a size as ``x.shape[d] // k``
(:class:`~autogrow.tracing.input_sizes.ModuleSizes`), the axis it sizes is frozen (a head
size: whole heads follow ``x``'s width) and the planner keeps ``heads × head_dim`` equal to
``x``'s width (an equality :func:`autogrow.transforms.plan.plan_widths` keeps, leaving both
at their width where a factor would break it). A size that is ``x.shape[d]`` itself
(``out.reshape(B, N, C)``) is the same equality without a divisor; the inner factors of the
axis it sizes (``heads × head_dim``: the head size) are frozen.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from ..axes.terms import Prod, Term
from ..rules.context import LiteralSize, RuleContext
from ..rules.registry import TensorValue
from ..rules.shape import head_size_from_width
from ..tracing.input_sizes import InputSize, ModuleSizes, stack_frames
from ..tracing.trace import TracerKind


def tie_input_sizes(ctx: RuleContext) -> None:
    """Freeze and tie the axes of exported view/reshape literals that fx shows computed from
    the module's input (see the module docstring); a no-op for fx graphs, whose rules see
    that arithmetic themselves."""
    if ctx.traced.kind != TracerKind.EXPORT:
        return
    traced: dict[str, ModuleSizes | None] = {}
    inputs: dict[str, list[TensorValue]] | None = None
    for lit in list(ctx.literals):
        if not lit.soft or lit.index is None or lit.call.name != "view":
            continue
        node = lit.call.node
        out = ctx.values.get(node)
        sizes = _int_leaves(node)
        if not isinstance(out, TensorValue) or len(sizes) != len(out.terms):
            continue
        found = _input_size(ctx, node, sizes, lit.index, traced)
        if found is None:
            continue
        path, size = found
        inputs = _module_inputs(ctx) if inputs is None else inputs
        width = _input_term(inputs.get(path, []), size, lit.value * size.divisor, ctx)
        if width is None:
            continue
        where = f"at {lit.call.where()}; whole heads follow that width"
        if size.divisor == 1:  # out.reshape(B, N, C): the axis keeps the input's width
            merged = ctx.store.resolve(lit.term)
            if merged == width:  # the input's own axis: nothing to keep equal
                continue
            if isinstance(merged, Prod):  # (heads head_dim): whole heads follow the width
                for inner in merged.factors[1:]:
                    ctx.freeze(
                        inner, f"a head size: heads × head size is the input's width {where}"
                    )
            ctx.literals.append(LiteralSize(lit.term, width, lit.call))
            continue
        head_size_from_width(ctx, out.terms, lit.index, width, size.divisor, lit.call)


def _module_paths(node: fx.Node) -> list[str]:
    return [str(p) for p, _ in (node.meta.get("nn_module_stack") or {}).values()]


def _int_leaves(node: fx.Node) -> tuple:
    """The op's size arguments after the input tensor, flattened (a non-int is None)."""
    out: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            out.append(v if type(v) is int else None)

    walk(tuple(node.args[1:]))
    return tuple(out)


def _input_size(
    ctx: RuleContext, node: fx.Node, sizes: tuple, index: int, traced: dict
) -> tuple[str, InputSize] | None:
    """The innermost module that fx can trace alone and finds the op in, with what the size
    at ``index`` is computed from there."""
    frames = stack_frames(node.meta.get("stack_trace"))
    if not frames:
        return None
    for path in reversed(_module_paths(node)):
        if not path:
            continue
        if path not in traced:
            traced[path] = ModuleSizes.of(
                ctx.traced.model.get_submodule(path), ctx.traced.leaf_types
            )
        sizes_of = traced[path]
        if sizes_of is None:
            continue
        found = sizes_of.find(frames, sizes, index)
        return None if found is None else (path, found)
    return None


def _input_term(
    inputs: list[TensorValue], size: InputSize, width: int, ctx: RuleContext
) -> Term | None:
    """Axis ``size.dim`` of the module's ``inputs``, when those of that width all carry one
    axis term (fx numbers the inputs, the exported graph does not: the width tells them
    apart)."""
    terms: set[Term] = set()
    for value in inputs:
        dim = size.dim + value.ndim if size.dim < 0 else size.dim
        if 0 <= dim < value.ndim and value.shape[dim] == width:
            terms.add(ctx.store.resolve(value.terms[dim]))
    return terms.pop() if len(terms) == 1 else None


def _module_inputs(ctx: RuleContext) -> dict[str, list[TensorValue]]:
    """Per module path, the activations its ops read from outside it."""
    out: dict[str, list[TensorValue]] = {}
    for node in ctx.traced.graph.nodes:
        paths = _module_paths(node)
        for arg in node.all_input_nodes:
            value = ctx.values.get(arg)
            if not isinstance(value, TensorValue) or value.param:
                continue
            outside = set(paths) - set(_module_paths(arg))
            for path in outside:
                out.setdefault(path, []).append(value)
    return out
