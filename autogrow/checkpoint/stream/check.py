"""Streamed verification: the old and the grown checkpoint run on a few sample inputs, each
module's weights read from disk only while it runs (:class:`~.lazy.LazyWeights`), and their
outputs compared with :mod:`autogrow.verify`'s dtype-aware tolerance.

The check is as strong as in-memory verification on the same inputs (the same function of
the same weights, computed module by module, in the dtypes they are stored in) and no
stronger: only the sample inputs are checked. The tolerance is the one for the dtype the
checkpoint stores, as in memory. Weights are not cast (a float32 copy of a bfloat16 output
head would be the largest allocation of the whole run; bfloat16 products on the CPU run as
fast as float32 ones here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...adapters import adapter_for
from ...errors import VerificationError
from ...tracing.inputs import infer_example_inputs
from ...verify import compare, default_tolerance, run
from .lazy import LazyWeights
from .source import SourceCheckpoint

SAMPLES = (2, 16)  # sequences × tokens of the sample inputs of a model with an embedding


def sample_inputs(
    model: nn.Module, float_dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """CPU sample inputs for ``model`` (parameters on meta): random token ids for a model
    that starts with an embedding, else random values of the inferred input's shape (in
    ``float_dtype``, the dtype its weights are stored in)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if next(m.parameters(recurse=False), None) is None:
            continue
        if isinstance(m, nn.Embedding):
            return (torch.randint(0, m.num_embeddings, SAMPLES, generator=gen),)
        break
    inferred = infer_example_inputs(model)
    return tuple(
        torch.randn(x.shape, generator=gen).to(float_dtype)
        if x.is_floating_point()
        else torch.zeros(x.shape, dtype=x.dtype)
        for x in inferred
    )


def streamed_output(
    build: Callable[[], nn.Module], source: SourceCheckpoint, inputs: tuple[Any, ...]
) -> Any:
    """The output of the model ``build()`` returns (parameters on meta) with the weights of
    ``source``, read module by module."""
    model = build()
    hooks = LazyWeights(model, source.tensor, source.infos)
    try:
        with adapter_for(model).inference_context(model):
            return run(model, inputs)
    finally:
        hooks.remove()
        source.close()


def stored_float_dtype(source: SourceCheckpoint) -> torch.dtype:
    """The floating dtype most of the stored bytes have (it sets the tolerance)."""
    sizes: dict[torch.dtype, int] = {}
    for info in source.infos.values():
        if info.dtype.is_floating_point:
            sizes[info.dtype] = sizes.get(info.dtype, 0) + info.nbytes
    return max(sizes, key=sizes.__getitem__) if sizes else torch.float32


def check_streamed(
    build_old: Callable[[], nn.Module],
    old: SourceCheckpoint,
    build_new: Callable[[], nn.Module],
    new: SourceCheckpoint,
    *,
    what: str,
    tolerance: float | None,
    where: Path,
) -> float:
    """Compare the old and grown checkpoints on sample inputs; the max relative error.
    Raises VerificationError beyond ``tolerance`` (None: the stored dtype's default)."""
    old_model = build_old()
    inputs = sample_inputs(old_model, stored_float_dtype(old))
    del old_model
    reference = streamed_output(build_old, old, inputs)
    output = streamed_output(build_new, new, inputs)
    result = compare(output, reference)
    dtype = stored_float_dtype(old)
    limit = default_tolerance(dtype) if tolerance is None else tolerance
    if not result.max_error <= limit:
        raise VerificationError(
            f"the {what} checkpoint written for {where} differs from the source on sample "
            f"inputs: max relative error {result.max_error:.3g} > tolerance {limit:.3g} "
            f"({'given' if tolerance is not None else f'default for {dtype}'}); nothing was "
            "written. This is a bug in autogrow unless the source's weights are not finite"
        )
    return result.max_error
