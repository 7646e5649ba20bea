"""float16 and bfloat16 models: widen and deepen verify against a tolerance set by the dtype.

The default is ``max(1e-4, 8 × eps)`` (``autogrow.verify.default_tolerance``): 1e-4 in
float32 as before, 7.8e-3 in float16, 0.0625 in bfloat16. An exact growth passes, a wrong one
is still refused, and the message names the dtype, the tolerance and how to change it.
"""

from __future__ import annotations

import pytest
import torch
from models import randomize_norms
from torch import nn

import autogrow
from autogrow.verify import (
    TOLERANCE,
    compare,
    compute_dtype,
    default_tolerance,
    run,
    verify,
)

HALF = [torch.float16, torch.bfloat16]


def _mlp() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)
    )
    return net, (torch.randn(8, 32),)


def _cnn() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return randomize_norms(net), (torch.randn(2, 3, 8, 8),)


def _llama() -> tuple[nn.Module, tuple]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config), (torch.randint(0, 64, (1, 8)),)


MODELS = {"mlp": _mlp, "cnn": _cnn, "llama": _llama}


def _half(build, dtype: torch.dtype) -> tuple[nn.Module, tuple]:
    model, inputs = build()
    model = model.to(dtype).eval()
    return model, tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.softmax(self.fc1(x), dim=-1))


def _broken(dtype: torch.dtype) -> tuple[nn.Module, tuple, autogrow.RuleRegistry]:
    """A model and a wrong rule (softmax as elementwise): widen errs by 0.22-0.28 in any dtype."""
    registry = autogrow.default_registry.copy()
    registry.bindings["softmax"] = registry.bindings["relu"]
    torch.manual_seed(0)
    return Broken().to(dtype), (torch.randn(3, 4, dtype=dtype),), registry


def test_default_tolerance_follows_the_dtype_and_keeps_1e_4_in_float32():
    assert default_tolerance(torch.float32) == default_tolerance(torch.float64) == TOLERANCE
    assert TOLERANCE == 1e-4
    assert default_tolerance(torch.float16) == 8 * torch.finfo(torch.float16).eps == 2**-7
    assert default_tolerance(torch.bfloat16) == 8 * torch.finfo(torch.bfloat16).eps == 2**-4


def test_the_least_precise_dtype_of_parameters_and_outputs_counts():
    net = nn.Linear(2, 2).half()
    out = net(torch.ones(1, 2, dtype=torch.float16))
    assert compute_dtype(net, out.float()) == torch.float16  # a head that casts to float32
    assert compute_dtype(nn.Linear(2, 2), out) == torch.float16  # autocast-like outputs
    assert compute_dtype(nn.Linear(2, 2).bfloat16(), out) == torch.bfloat16
    assert compute_dtype(nn.Linear(2, 2).double(), out.double()) == torch.float64
    assert compute_dtype(nn.ReLU(), torch.ones(2, dtype=torch.long)) == torch.float32


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", list(MODELS))
def test_widen_half_precision_passes_within_the_documented_tolerance(name, dtype):
    model, inputs = _half(MODELS[name], dtype)
    reference = run(model, inputs)
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)
    assert all(p.dtype == dtype for p in wide.parameters())
    error = compare(run(wide, inputs), reference).max_error
    assert error <= default_tolerance(dtype)
    if dtype == torch.bfloat16:  # the former fixed 1e-4 refused these (issue 10)
        assert error > TOLERANCE


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", list(MODELS))
def test_deepen_half_precision_passes_within_the_documented_tolerance(name, dtype):
    model, inputs = _half(MODELS[name], dtype)
    reference = run(model, inputs)
    deep = autogrow.deepen(model, example_inputs=inputs)
    assert sum(1 for _ in deep.modules()) > sum(1 for _ in model.modules())
    assert compare(run(deep, inputs), reference).max_error <= default_tolerance(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_a_wrong_rule_is_still_refused_in_half_precision(dtype):
    model, inputs, registry = _broken(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = str(dtype).removeprefix("torch.")
    tol = default_tolerance(dtype)
    with pytest.raises(autogrow.VerificationError) as info:
        autogrow.widen(model, 2.0, example_inputs=inputs, registry=registry, inplace=True)
    message = str(info.value)
    assert f"tolerance {tol:.3g}, the default for {name}: 8 × its eps" in message
    assert f"more than {name} rounding explains" in message and "bug" in message
    assert "pass a larger tolerance= to widen" in message
    assert model.fc1.out_features == 6  # restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # A tolerance given by the caller replaces the default (here, so loose it accepts it).
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, registry=registry, tolerance=1.0)
    assert wide.fc1.out_features == 12


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_a_perturbed_weight_is_refused(dtype):
    model, inputs = _half(_mlp, dtype)
    reference = run(model, inputs)
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)
    with torch.no_grad():
        wide[2].weight.mul_(2)  # every outgoing share doubled: as if none were divided
    with pytest.raises(autogrow.VerificationError, match="eps, more than .* rounding explains"):
        verify(wide, inputs, reference, what="widened")


def test_a_rounding_difference_above_a_given_tolerance_is_not_called_a_bug():
    model, inputs = _half(_mlp, torch.bfloat16)
    with pytest.raises(autogrow.VerificationError) as info:
        autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, tolerance=TOLERANCE)
    message = str(info.value)
    assert "tolerance=0.0001 as given; the default for bfloat16 is 0.0625" in message
    assert "within bfloat16 rounding" in message and "bug" not in message
    assert "pass a larger tolerance= to widen" in message


def test_float32_keeps_its_tolerance_and_message():
    model, inputs, registry = _broken(torch.float32)
    with pytest.raises(autogrow.VerificationError) as info:
        autogrow.widen(model, 2.0, example_inputs=inputs, registry=registry)
    message = str(info.value)
    assert "tolerance 0.0001, the default for float32)" in message
    assert "autogrow bug or an op whose rule is wrong" in message


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "1e-3", True])
def test_a_bad_tolerance_is_refused_before_anything_runs(bad):
    model, inputs = _mlp()
    with pytest.raises(autogrow.InvalidArgumentError, match="tolerance must be"):
        autogrow.widen(model, 2.0, example_inputs=inputs, tolerance=bad)
    with pytest.raises(autogrow.InvalidArgumentError, match="tolerance must be"):
        autogrow.deepen(model, example_inputs=inputs, tolerance=bad)
