"""Hugging Face transformers models: trace them without a KV cache, keep per-head sizes fixed,
and keep ``model.config`` and the modules' size attributes in step with the grown tensors, so
that ``type(model)(model.config)`` builds exactly the grown shapes and ``save_pretrained`` /
``from_pretrained`` round-trip.

How the new config is found, without a table per architecture:

1. **Probe**: each integer config field is doubled in turn and the model is built on the meta
   device (no memory, milliseconds); the parameters whose shapes change give that field's
   exponents (``log2`` of the size ratio per parameter axis).
2. **Attention counts**: shapes cannot tell heads from head size (BERT's projections are
   ``hidden × hidden`` whatever the head count), so head-count fields take the ratio of the query
   heads that the width graph saw at ``scaled_dot_product_attention``; head-size fields stay
   (autogrow never changes a head's size in these models: one config number describes q, k, v).
3. **Solve** the remaining fields by least squares on the exponents, round, and **check** by
   building the model from the new config on meta: every parameter shape must equal the grown
   one, otherwise :class:`~autogrow.ConstraintError`.

Nothing here imports transformers: a model is recognised by its config's class hierarchy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import ConstraintError

HEAD_COUNTS = (
    "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads",
    "decoder_attention_heads",
)  # fmt: skip
KV_HEAD_COUNTS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num")
HEAD_SIZES = ("head_dim", "d_kv", "kv_channels", "attention_head_size", "head_size")
_MISSING = object()


def is_hf_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (judged without importing it)."""
    config = getattr(model, "config", None)
    names = {c.__name__ for c in type(config).__mro__}
    return bool(names & {"PreTrainedConfig", "PretrainedConfig"}) and hasattr(model, "tie_weights")


@contextmanager
def inference_settings(model: nn.Module) -> Iterator[None]:
    """Run without a KV cache (a ``DynamicCache`` output cannot be traced or compared)."""
    config = getattr(model, "config", None) if is_hf_model(model) else None
    old = getattr(config, "use_cache", _MISSING)
    if config is not None and old is not _MISSING:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None and old is not _MISSING:
            config.use_cache = old


def freeze_head_sizes(analysis: Any) -> None:
    """A transformers config has one head size for queries, keys and values: keep it."""
    for axes in analysis.attention:
        analysis.store.freeze(
            axes.v_dim,
            f"per-head value size at attention in module '{axes.module}' "
            "(a transformers config describes one head_dim)",
        )


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    return {k: tuple(v.shape) for k, v in named.items()}


def _build_on_meta(model: nn.Module, config: Any) -> nn.Module:
    with torch.device("meta"):
        return type(model)(config)


def _int_fields(config: Any) -> dict[str, int]:
    return {
        k: v
        for k, v in vars(config).items()
        if type(v) is int and v >= 1 and not k.startswith("_") and not k.endswith("_token_id")
    }


def grown_config(
    model: nn.Module, new_shapes: dict[str, tuple[int, ...]], head_ratio: float | None
) -> dict[str, int]:
    """The config fields (name → new value) that describe a model with ``new_shapes``.

    ``head_ratio``: how many times more query heads the grown model has (None: no attention
    call was seen). Raises ConstraintError when no config describes the grown shapes.
    """
    config = model.config
    base = _shapes(_build_on_meta(model, config))
    old = _shapes(model)
    if any(base.get(k) != s for k, s in old.items() if k in base):
        different = [k for k, s in old.items() if k in base and base[k] != s][:3]
        raise ConstraintError(
            f"{type(model).__name__}'s config does not describe the model as it is "
            f"(e.g. {', '.join(different)}), so it cannot describe the grown one. Widen a model "
            "whose shapes match type(model)(model.config), or update the config first."
        )
    axes = [(k, d) for k, s in base.items() if k in new_shapes for d in range(len(s))]
    fields = _int_fields(config)
    exponents: dict[str, list[float]] = {}
    for name, value in fields.items():
        probe = copy.deepcopy(config)
        setattr(probe, name, value * 2)
        try:
            shapes = _shapes(_build_on_meta(model, probe))
        except Exception:  # noqa: BLE001 - an invalid combination: this field is not a width
            continue
        if shapes.keys() != base.keys():
            continue  # a structural field (number of layers): not ours to change
        column = [math.log2(shapes[k][d] / base[k][d]) for k, d in axes]
        if any(column):
            exponents[name] = column

    changes: dict[str, int] = {}
    fixed: dict[str, float] = {}
    for name in exponents.keys() | fields.keys():
        if name in HEAD_SIZES:
            fixed[name] = 0.0
        elif head_ratio is not None and name in HEAD_COUNTS + KV_HEAD_COUNTS:
            fixed[name] = math.log2(head_ratio)
    target = torch.tensor(
        [math.log2(new_shapes[k][d] / base[k][d]) for k, d in axes], dtype=torch.float64
    )
    for name, x in fixed.items():
        if name in exponents:
            target -= x * torch.tensor(exponents[name], dtype=torch.float64)
    free = [n for n in exponents if n not in fixed]
    solved: dict[str, float] = dict(fixed)
    if free:
        matrix = torch.tensor([exponents[n] for n in free], dtype=torch.float64).T
        solution = torch.linalg.lstsq(matrix, target.unsqueeze(1), driver="gelsd").solution
        solved.update({n: float(x) for n, x in zip(free, solution.squeeze(1))})
    for name, x in solved.items():
        value = round(fields[name] * 2**x) if name in fields else None
        if value is not None and value != fields[name]:
            changes[name] = value

    check = copy.deepcopy(config)
    for name, value in changes.items():
        setattr(check, name, value)
    built = _shapes(_build_on_meta(model, check))
    wrong = [k for k, s in new_shapes.items() if k in built and built[k] != s]
    if wrong:
        shown = ", ".join(f"{k} {tuple(new_shapes[k])} vs {built[k]}" for k in wrong[:3])
        raise ConstraintError(
            f"no {type(config).__name__} describes the widened {type(model).__name__}: with "
            f"{changes or 'no changes'} the config builds different shapes ({shown}). Widen "
            "every layer by the same factor (a float factor does) so one config fits."
        )
    return changes


def apply_config(model: nn.Module, changes: dict[str, int]) -> Callable[[], None]:
    """Set the new config fields on ``model.config`` and copy every size attribute the modules
    compute from the config (num_heads, head_dim, num_key_value_groups, ...) from a reference
    built on meta. Returns an undo function."""
    config = model.config
    old_fields = {k: getattr(config, k) for k in changes}
    for k, v in changes.items():
        setattr(config, k, v)
    reference = dict(_build_on_meta(model, config).named_modules())
    undo: list[tuple[nn.Module, str, Any]] = []
    for name, module in model.named_modules():
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module):
            continue
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training" or not _is_size(value):
                continue
            new = vars(ref).get(attr, _MISSING)
            if new is not _MISSING and type(new) is type(value) and new != value:
                undo.append((module, attr, value))
                setattr(module, attr, new)

    def restore() -> None:
        for k, v in old_fields.items():
            setattr(config, k, v)
        for module, attr, value in undo:
            setattr(module, attr, value)

    return restore


def _is_size(value: Any) -> bool:
    if type(value) in (int, float):
        return True
    return type(value) is tuple and all(type(v) is int for v in value)
