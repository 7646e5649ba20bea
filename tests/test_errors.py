"""Refusals name the op, the module and the model's own source line (issue 10, point 5)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import autogrow
from autogrow.verify import verify


class SplitByTuple(nn.Module):
    """timm's MambaOut keeps its split sizes in a tuple attribute (``self.split_indices``)."""

    def __init__(self, sizes=(8, 8)):
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.split_indices = sizes
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        a, b = torch.split(self.fc1(x), self.split_indices, dim=-1)  # the line named
        return self.fc2(a * b)


class SplitByLiteral(SplitByTuple):
    def forward(self, x):
        a, b = torch.split(self.fc1(x), [8, 8], dim=-1)  # the line named
        return self.fc2(a * b)


def test_split_sizes_in_a_tuple_attribute_are_updated():
    wide = autogrow.widen(SplitByTuple(), 2.0, example_inputs=(torch.randn(2, 4),), seed=0)
    assert wide.split_indices == (16, 16)


def test_hardcoded_split_size_names_the_models_line():
    with pytest.raises(autogrow.HardcodedSizeError) as info:
        autogrow.widen(SplitByLiteral(), 2.0, example_inputs=(torch.randn(2, 4),))
    message = str(info.value)
    assert f"{__file__}:" in message and "torch.split(self.fc1(x)" in message
    assert "functional.py" not in message
    assert "keep it in a module attribute" in message
    assert message.count("(") == message.count(")")


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 2)  # expects 6 features, gets 8: the grown model's failure

    def forward(self, x):
        return self.proj(x)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.block = Inner()

    def forward(self, x):
        return self.block(torch.relu(self.fc(x)))


def test_verification_failure_names_the_module_its_group_and_the_line():
    groups = {"block.proj": "in width group 'fc' (8 -> 12)"}
    with pytest.raises(autogrow.VerificationError) as info:
        verify(Outer(), (torch.randn(1, 4),), None, what="widened", describe_module=groups.get)
    message = str(info.value)
    assert "Raised in module 'block.proj' (Linear), in width group 'fc' (8 -> 12)." in message
    assert f"{__file__}:" in message and "return self.proj(x)" in message
    assert message.startswith("the widened model failed to run on the example inputs: Runtime")


class AddsAFixedSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        return self.fc(x) + torch.ones(6)  # fails in the model's own forward


def test_verification_failure_in_the_top_level_forward():
    with pytest.raises(autogrow.VerificationError) as info:
        verify(AddsAFixedSize(), (torch.randn(1, 4),), None, what="deepened")
    message = str(info.value)
    assert "Raised in the model's own forward (AddsAFixedSize)." in message
    assert "return self.fc(x) + torch.ones(6)" in message


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def test_lstm_without_example_inputs_says_what_was_inferred(monkeypatch):
    monkeypatch.delenv("AUTOGROW_DEBUG", raising=False)
    torch_log = logging.getLogger("torch")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    torch_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(autogrow.ExampleInputsError) as info:
                autogrow.widen(Recurrent(), 2.0)
    finally:
        torch_log.removeHandler(handler)
    message = str(info.value)
    assert "example inputs autogrow inferred: a 1×16 float32 tensor for Linear 'fc'" in message
    assert "first layer with parameters is LSTM 'lstm'" in message
    assert "Pass example_inputs=" in message
    # torch's own warnings (export's "were assigned during export") and log stay out of sight
    assert not [w for w in caught if "torch" in w.filename or "export" in str(w.message)]
    assert not [r for r in seen if r.name.startswith("torch")]


def test_torch_log_during_tracing_is_held_back_unless_asked(monkeypatch, capfd):
    from autogrow.tracing.trace import quiet_torch

    monkeypatch.delenv("AUTOGROW_DEBUG", raising=False)
    with quiet_torch() as held:
        logging.getLogger("torch.fx.experimental.symbolic_shapes").warning("a graph dump")
    assert held == ["torch.fx.experimental.symbolic_shapes: a graph dump"]
    assert "a graph dump" not in capfd.readouterr().err
    monkeypatch.setenv("AUTOGROW_DEBUG", "1")
    with quiet_torch() as held:
        logging.getLogger("torch.fx.experimental.symbolic_shapes").warning("a graph dump")
    assert held == [] and "a graph dump" in capfd.readouterr().err


class SplitsChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = torch.split(self.stem(x), [4, 4], dim=1)
        return self.head(a * b)


def _wrong_split_rule(call, ctx):  # cuts the axis but forgets that its sizes are literals
    x = call.args["tensor"]
    sizes = list(call.args["split_size_or_sections"])
    parts = ctx.store.split(x.terms[1], sizes, call.where())
    return [
        autogrow.TensorValue([x.terms[0], p, *x.terms[2:]], tuple(out.shape))
        for p, out in zip(parts, call.out)
    ]


def test_widen_verification_failure_names_module_width_groups_and_line():
    # A wrong rule lets widen grow what the model's split cannot take: the grown model fails
    # to run, and the error names where and which growth it was.
    registry = autogrow.default_registry.copy()
    registry.rule("split", signature="tensor, split_size_or_sections, dim=0")(_wrong_split_rule)
    model = SplitsChannels().eval()
    with pytest.raises(autogrow.VerificationError) as info:
        autogrow.widen(
            model, 2.0, example_inputs=(torch.randn(1, 3, 4, 4),), seed=0, registry=registry
        )
    message = str(info.value)
    assert "failed to run" in message
    assert "Raised in the model's own forward (SplitsChannels), in width group(s) 'stem'" in message
    assert "torch.split(self.stem(x), [4, 4], dim=1)" in message  # the model's own line
