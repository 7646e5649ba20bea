"""autogrow.widen on small hand-written models (tests/models.py).

Every check that the widened model computes the same function is made here, in eval mode,
with inputs other than the example inputs: max|new - old| / max|old| <= 1e-4.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn
from models import (
    GROUPED_MODELS,
    MODELS,
    ValueControlFlow,
    assert_same_function,
    assert_unchanged,
    make,
    param_count,
    shares_storage,
    snapshot,
)

import autogrow
from autogrow.errors import (
    AutogrowError,
    ConstraintError,
    FrozenGroupError,
    GroupNotFoundError,
    HardcodedSizeError,
    InvalidArgumentError,
    TracingError,
    VerificationError,
)

SEED = 1234


def _named(name: str) -> re.Pattern:
    """A pattern matching ``name`` as a whole word (so "fc" does not match "fc1")."""
    return re.compile(rf"(?<![\w.]){re.escape(name)}(?![\w])")


def _check_widened(new, old, snap, inputs, example):
    assert_unchanged(old, snap)
    assert type(new) is type(old)
    assert new is not old
    assert param_count(new) > param_count(old), "widen returned a model that is not larger"
    assert not shares_storage(new, old), "the widened model shares tensors with the original"
    assert_same_function(new, old, inputs)
    assert_same_function(new, old, example)


# --------------------------------------------------------------------------------------------
# function preservation on every hand-written model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("factor", [1.5, 2.0])
@pytest.mark.parametrize("name", list(MODELS))
def test_widen_preserves_function(name, factor, train_mode):
    model, example, test_inputs = make(name)
    model.train(train_mode)
    snap = snapshot(model)
    try:
        new = autogrow.widen(model, factor, example_inputs=example, seed=SEED)
    except HardcodedSizeError as e:
        # Only LeNet hard-codes a size (x.view(-1, 16*5*5)); refusing it is allowed.
        assert name == "lenet", f"unexpected HardcodedSizeError: {e}"
        assert "view" in str(e), f"the message should name the op: {e}"
        assert_unchanged(model, snap)
        return
    except AutogrowError:
        assert_unchanged(model, snap)
        raise
    _check_widened(new, model, snap, test_inputs, example)
    assert model.training is train_mode


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "noverify"])
@pytest.mark.parametrize("factor", [1.5, 2.0])
@pytest.mark.parametrize("name", list(GROUPED_MODELS))
def test_grouped_conv_blocks_that_do_not_line_up(name, factor, verify):
    """A norm / grouped conv with G groups feeding a grouped conv with another group count.

    widen must return a correct model or refuse up front (ConstraintError, ...); a
    VerificationError, or a model that does not run / differs when verify=False, means the
    transform itself is wrong.
    """
    model, example, test_inputs = make(name)
    snap = snapshot(model)
    try:
        new = autogrow.widen(model, factor, example_inputs=example, seed=SEED, verify=verify)
    except VerificationError:
        assert_unchanged(model, snap)
        raise
    except AutogrowError:
        assert_unchanged(model, snap)
        return
    _check_widened(new, model, snap, test_inputs, example)


def test_lenet_keeps_hardcoded_view_consistent():
    """If LeNet is widened, conv2 must keep its 16 channels (the view hard-codes 16*5*5)."""
    model, example, test_inputs = make("lenet")
    snap = snapshot(model)
    try:
        new = autogrow.widen(model, 2.0, example_inputs=example, seed=SEED)
    except HardcodedSizeError:
        assert_unchanged(model, snap)
        return
    assert new.conv2.out_channels == 16
    assert new.fc1.in_features == 16 * 5 * 5
    _check_widened(new, model, snap, test_inputs, example)


def test_shape_control_flow_both_branches():
    """fx cannot follow `if x.shape[0] > 1`; the widened model must match for both branches."""
    model, example, _ = make("shape_control_flow")
    snap = snapshot(model)
    new = autogrow.widen(model, 2.0, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)
    assert param_count(new) > param_count(model)
    g = torch.Generator().manual_seed(5)
    for batch in (1, 2, 9):
        assert_same_function(new, model, (torch.randn(batch, 8, generator=g),))


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "residual_mlp"])
def test_widen_twice(name):
    model, example, test_inputs = make(name)
    snap = snapshot(model)
    once = autogrow.widen(model, 1.5, example_inputs=example, seed=SEED)
    snap_once = snapshot(once)
    twice = autogrow.widen(once, 1.5, example_inputs=example, seed=SEED + 1)
    assert_unchanged(model, snap)
    assert_unchanged(once, snap_once)
    assert param_count(twice) > param_count(once) > param_count(model)
    assert_same_function(twice, model, test_inputs)


@pytest.mark.parametrize("name", ["mlp", "small_cnn"])
def test_same_seed_same_result(name):
    model, example, _ = make(name)
    a = autogrow.widen(model, 1.7, example_inputs=example, seed=7)
    b = autogrow.widen(model, 1.7, example_inputs=example, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs between two runs with the same seed"


def test_widen_without_example_inputs_mlp():
    """An MLP's entry layer is an nn.Linear: the example inputs can be inferred."""
    model, _, test_inputs = make("mlp")
    snap = snapshot(model)
    new = autogrow.widen(model, 2.0, seed=SEED)
    assert_unchanged(model, snap)
    assert_same_function(new, model, test_inputs)


@pytest.mark.parametrize("name", list(MODELS))
def test_widen_without_example_inputs(name):
    """Inferred example inputs: a correct model or an AutogrowError (ExampleInputsError when
    they cannot be inferred), never another exception."""
    model, _, test_inputs = make(name)
    snap = snapshot(model)
    try:
        new = autogrow.widen(model, 2.0, seed=SEED)
    except AutogrowError:
        assert_unchanged(model, snap)
        return
    assert_unchanged(model, snap)
    assert type(new) is type(model)
    assert param_count(new) > param_count(model)
    assert_same_function(new, model, test_inputs)


# --------------------------------------------------------------------------------------------
# dict factors
# --------------------------------------------------------------------------------------------


def test_dict_width_by_module_name():
    model, example, test_inputs = make("mlp")
    snap = snapshot(model)
    new = autogrow.widen(model, {"fc1": 20}, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)
    assert new.fc1.out_features == 20
    assert new.fc2.in_features == 20
    assert new.fc2.out_features == 16, "a group that was not requested changed width"
    assert new.fc.out_features == 5
    assert_same_function(new, model, test_inputs)


def test_dict_float_factor_by_module_name():
    model, example, test_inputs = make("mlp")
    new = autogrow.widen(model, {"fc2": 1.5}, example_inputs=example, seed=SEED)
    assert new.fc2.out_features == 24
    assert new.fc.in_features == 24
    assert new.fc1.out_features == 16
    assert_same_function(new, model, test_inputs)


def test_dict_nested_qualified_name():
    model, example, test_inputs = make("residual_mlp")
    snap = snapshot(model)
    new = autogrow.widen(model, {"blocks.0.fc1": 40}, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)
    assert new.blocks[0].fc1.out_features == 40
    assert new.blocks[0].fc2.in_features == 40
    assert new.blocks[1].fc1.out_features == 24
    assert_same_function(new, model, test_inputs)


def test_dict_by_group_name_from_analyze():
    model, example, test_inputs = make("mlp")
    graph = autogrow.analyze(model, example)
    names = [g.name for g in graph.groups]
    assert len(names) == len(set(names)), f"group names are not unique: {names}"
    free = [g for g in graph.groups if not g.frozen]
    assert free, "an MLP has widenable hidden groups"
    for g in free:
        new = autogrow.widen(model, {g.name: g.width + 3}, example_inputs=example, seed=SEED)
        assert param_count(new) > param_count(model)
        assert_same_function(new, model, test_inputs)


SMALL_CNN_HIDDEN = [
    "stem",
    "res_conv1",
    "res_conv2",
    "branch_a",
    "branch_b",
    "gconv",
    "dwconv",
    "se.fc1",
    "se.fc2",
]


@pytest.mark.parametrize("key", SMALL_CNN_HIDDEN)
def test_module_key_sets_its_output_width(key):
    """README: a module's name stands for the group of its output width, and an int value is
    the new width ("conv1": 128 -> 128 channels).  Every module listed has a hidden output, so
    doubling it is always possible (each unit replicated twice)."""
    model, example, test_inputs = make("small_cnn")
    snap = snapshot(model)
    old_mod = model.get_submodule(key)
    old_width = getattr(old_mod, "out_channels", getattr(old_mod, "out_features", None))
    new = autogrow.widen(model, {key: 2 * old_width}, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)
    mod = new.get_submodule(key)
    new_width = getattr(mod, "out_channels", getattr(mod, "out_features", None))
    assert new_width == 2 * old_width, f"asked {key} for {2 * old_width} outputs, got {new_width}"
    assert new.fc.out_features == model.fc.out_features
    assert_same_function(new, model, test_inputs)


def test_lenet_unaffected_groups_widen():
    model, example, test_inputs = make("lenet")
    snap = snapshot(model)
    new = autogrow.widen(model, {"conv1": 12, "fc1": 200}, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)
    assert new.conv1.out_channels == 12 and new.conv2.in_channels == 12
    assert new.fc1.out_features == 200 and new.fc2.in_features == 200
    assert_same_function(new, model, test_inputs)


def test_lenet_requested_hardcoded_group_refused():
    model, example, _ = make("lenet")
    snap = snapshot(model)
    with pytest.raises((HardcodedSizeError, FrozenGroupError)) as info:
        autogrow.widen(model, {"conv2": 32}, example_inputs=example, seed=SEED)
    if isinstance(info.value, HardcodedSizeError):
        assert "view" in str(info.value), str(info.value)
    else:
        assert _named("conv2").search(str(info.value)), str(info.value)
    assert_unchanged(model, snap)


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------


def test_analyze_mlp_groups():
    model, example, _ = make("mlp")
    snap = snapshot(model)
    graph = autogrow.analyze(model, example)
    assert_unchanged(model, snap)
    widths = sorted((g.width, bool(g.frozen)) for g in graph.groups)
    # the two hidden groups (16, free) and the logits (5, frozen); the input (10) is frozen
    assert (16, False) in widths
    assert [w for w, frozen in widths if not frozen] == [16, 16]
    assert (5, True) in widths
    for g in graph.groups:
        assert isinstance(g.name, str) and g.name


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1.0, 0.5, 0.0, -2.0, math.nan, "2.0", None])
def test_bad_factor(factor):
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(InvalidArgumentError):
        autogrow.widen(model, factor, example_inputs=example)
    assert_unchanged(model, snap)


def test_infinite_factor_refused():
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(AutogrowError):
        autogrow.widen(model, math.inf, example_inputs=example)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("value", [0.5, 1.0, math.nan, -3, 0])
def test_bad_dict_value(value):
    """A dict value that does not widen (factor <= 1, NaN, a width <= 0) is refused."""
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(AutogrowError):
        autogrow.widen(model, {"fc1": value}, example_inputs=example)
    assert_unchanged(model, snap)


def test_smaller_width_is_constraint_error():
    """README: "Widths only grow: asking for a smaller width raises ConstraintError"."""
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(ConstraintError, match=_named("fc1")):
        autogrow.widen(model, {"fc1": 8}, example_inputs=example)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("obj", ["not a model", 3, None, lambda x: x, torch.zeros(3)])
def test_non_module(obj):
    with pytest.raises(InvalidArgumentError):
        autogrow.widen(obj, 2.0)


@pytest.mark.parametrize("kwargs", [{"symmetry": "no-such-mode"}, {"noise": -1.0}])
def test_bad_option(kwargs):
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(InvalidArgumentError):
        autogrow.widen(model, 2.0, example_inputs=example, **kwargs)
    assert_unchanged(model, snap)


def test_group_not_found():
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(GroupNotFoundError, match="no_such_layer") as info:
        autogrow.widen(model, {"no_such_layer": 32}, example_inputs=example)
    assert isinstance(info.value, KeyError)
    assert_unchanged(model, snap)


def test_group_not_found_among_valid_keys():
    model, example, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(GroupNotFoundError, match=r"fc7"):
        autogrow.widen(model, {"fc1": 32, "fc7": 32}, example_inputs=example)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_frozen_output_group(train_mode):
    """fc is the last layer: its output width is the number of logits, which is frozen."""
    model, example, _ = make("mlp")
    model.train(train_mode)
    snap = snapshot(model)
    with pytest.raises(FrozenGroupError, match=_named("fc")):
        autogrow.widen(model, {"fc": 20}, example_inputs=example, inplace=False)
    assert_unchanged(model, snap)


def test_frozen_output_group_cnn():
    model, example, _ = make("small_cnn")
    snap = snapshot(model)
    with pytest.raises(FrozenGroupError, match=_named("fc")):
        autogrow.widen(model, {"fc": 2.0}, example_inputs=example)
    assert_unchanged(model, snap)


def test_frozen_groups_from_analyze():
    model, example, _ = make("mlp")
    graph = autogrow.analyze(model, example)
    frozen = [g for g in graph.groups if g.frozen]
    assert frozen
    snap = snapshot(model)
    for g in frozen:
        with pytest.raises(FrozenGroupError):
            autogrow.widen(model, {g.name: g.width * 2}, example_inputs=example)
    assert_unchanged(model, snap)


def test_untraceable_model():
    """`if x.sum() > 0` depends on a value: neither fx nor torch.export can capture it."""
    torch.manual_seed(0)
    model = ValueControlFlow()
    model.train()
    example = (torch.randn(4, 8),)
    snap = snapshot(model)
    with pytest.raises(TracingError):
        autogrow.widen(model, 2.0, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)
    with pytest.raises(TracingError):
        autogrow.widen(model, {"fc1": 24}, example_inputs=example, seed=SEED)
    assert_unchanged(model, snap)


def test_errors_are_autogrow_errors():
    for cls in (
        InvalidArgumentError,
        TracingError,
        HardcodedSizeError,
        FrozenGroupError,
        GroupNotFoundError,
    ):
        assert issubclass(cls, AutogrowError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert autogrow.AutogrowError is AutogrowError


@pytest.mark.parametrize("name", ["mlp", "lenet", "residual_mlp", "small_cnn"])
def test_inplace_false_never_mutates_on_any_request(name):
    """Every single-key request, whatever its outcome, leaves the original untouched."""
    model, example, test_inputs = make(name)
    snap = snapshot(model)
    keys = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for key in keys:
        try:
            new = autogrow.widen(model, {key: 2.0}, example_inputs=example, seed=SEED)
        except AutogrowError as e:
            assert_unchanged(model, snap)
            if isinstance(e, (FrozenGroupError, GroupNotFoundError)):
                assert _named(key).search(str(e)), f"message does not name {key!r}: {e}"
            continue
        assert_unchanged(model, snap)
        assert param_count(new) > param_count(model)
        assert_same_function(new, model, test_inputs)
