"""Public API behaviour: analyze's outputs, options of widen, state handling, extension points."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from autogrow.verify import compare, run


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _net(seed=0):
    torch.manual_seed(seed)
    model = ConvNet()
    for bn in (model.bn1, model.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return model, (torch.randn(2, 3, 12, 12),)


def _exact(new, old, inputs):
    return compare(run(new, inputs), run(old, inputs)).max_error <= 1e-4


def test_analyze_finds_the_residual_group_and_freezes_inputs_and_logits():
    model, inputs = _net()
    graph = autogrow.analyze(model, inputs)
    group = graph.group("conv1")
    assert group is graph.group("conv2") is graph.group("bn2")  # tied by the residual add
    assert group.widenable and group.width == 8
    assert not graph.group("fc").widenable  # the logits
    assert "conv1" in str(graph) and "widenable" in str(graph)


def test_analyze_exports_json_dot_and_networkx():
    model, inputs = _net()
    graph = autogrow.analyze(model, inputs)
    data = json.loads(graph.to_json())
    assert {g["name"] for g in data["groups"]} >= {"conv1", "fc"}
    assert graph.to_dot().startswith("graph width_groups {")
    assert graph.nx.has_edge("conv1", "conv2.weight:1")


def test_analysis_never_runs_the_model_in_train_mode():
    model, inputs = _net()
    model.train()
    stats = model.bn1.running_mean.clone()
    autogrow.analyze(model, inputs)
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0)
    assert torch.equal(model.bn1.running_mean, stats)
    assert model.training and model.bn1.training and wide.training


def test_seed_makes_widen_deterministic():
    model, inputs = _net()
    a = autogrow.widen(model, 1.5, example_inputs=inputs, seed=3)
    b = autogrow.widen(model, 1.5, example_inputs=inputs, seed=3)
    c = autogrow.widen(model, 1.5, example_inputs=inputs, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values())
    )


@pytest.mark.parametrize("symmetry", ["split", "none"])
def test_both_symmetry_modes_are_exact(symmetry):
    model, inputs = _net()
    wide = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, symmetry=symmetry)
    assert _exact(wide, model, inputs)
    # Recover each new unit's source from its copied incoming weights (conv1's rows).
    old_rows, new_rows = model.conv1.weight.flatten(1), wide.conv1.weight.flatten(1)
    source = torch.cdist(new_rows, old_rows).argmin(1)
    assert torch.equal(new_rows, old_rows[source])
    # Outgoing shares (fc's columns) of each unit's replicas sum to the original column.
    summed = torch.zeros_like(model.fc.weight).index_add_(1, source, wide.fc.weight)
    assert torch.allclose(summed, model.fc.weight, atol=1e-6)
    counts = torch.bincount(source)
    replicated = counts[source] > 1
    shares = wide.fc.weight[:, replicated] / model.fc.weight[:, source[replicated]]
    equal = torch.allclose(shares, 1.0 / counts[source[replicated]].float().expand_as(shares))
    assert equal == (symmetry == "none")


def test_noise_perturbs_only_after_verification():
    model, inputs = _net()
    noisy = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, noise=0.05)
    error = compare(run(noisy, inputs), run(model, inputs)).max_error
    assert 0 < error < 0.5


def test_inplace_modifies_and_returns_the_same_object():
    model, inputs = _net()
    reference = run(model, inputs)
    result = autogrow.widen(model, 2.0, example_inputs=inputs, seed=0, inplace=True)
    assert result is model and model.conv1.out_channels == 16
    assert compare(run(model, inputs), reference).max_error <= 1e-4


def test_inplace_failure_restores_the_model():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(torch.softmax(self.fc1(x), dim=-1))

    registry = autogrow.default_registry.copy()
    registry.bindings["softmax"] = registry.bindings["relu"]  # a wrong rule: softmax as elementwise
    torch.manual_seed(0)
    model, x = Broken(), torch.randn(3, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(autogrow.VerificationError, match="relative error"):
        autogrow.widen(model, 2.0, example_inputs=(x,), inplace=True, registry=registry)
    assert model.fc1.out_features == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # With the built-in rules, softmax freezes its axis instead.
    with pytest.raises(autogrow.ConstraintError, match="nothing to widen"):
        autogrow.widen(model, 2.0, example_inputs=(x,))


def test_result_supports_state_dict_save_and_training():
    model, inputs = _net()
    wide = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0)
    buffer = io.BytesIO()
    torch.save(wide.state_dict(), buffer)
    buffer.seek(0)
    clone = autogrow.widen(model, 1.5, example_inputs=inputs, seed=0)
    clone.load_state_dict(torch.load(buffer))
    assert _exact(clone, wide, inputs)
    wide.train()
    loss = wide(inputs[0]).square().mean()
    loss.backward()
    assert wide.conv1.weight.grad is not None and wide.conv1.weight.grad.shape[0] == 12


def test_hardcoded_view_is_refused_with_the_source_line():
    class HardCoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(-1, 64))

    model, x = HardCoded(), torch.randn(2, 1, 6, 6)
    with pytest.raises(autogrow.HardcodedSizeError, match=r"test_api\.py:\d+.*view\(-1, 64\)"):
        autogrow.widen(model, 2.0, example_inputs=(x,))


def test_size_attribute_read_by_forward_is_kept_in_sync():
    class FromAttribute(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.flat = 4 * 4 * 4
            self.fc = nn.Linear(self.flat, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(-1, self.flat))

    torch.manual_seed(0)
    model, x = FromAttribute(), torch.randn(2, 1, 6, 6)
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0)
    assert wide.flat == 128 and model.flat == 64
    assert _exact(wide, model, (x,))


def test_op_without_a_rule_is_listed_and_named_when_its_group_is_requested():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 1)
            self.conv2 = nn.Conv2d(2, 4, 1)

        def forward(self, x):
            return self.conv2(F.pixel_shuffle(self.conv1(x), 2))

    model, x = Shuffle(), torch.randn(1, 3, 4, 4)
    graph = autogrow.analyze(model, (x,))
    assert any("pixel_shuffle" in b for b in graph.blocked)
    with pytest.raises(autogrow.UnsupportedOpError, match="pixel_shuffle.*no rule"):
        autogrow.widen(model, {"conv1": 16}, example_inputs=(x,))


def test_user_module_rule_makes_a_leaf_module_widenable():
    class Scale(nn.Module):  # a custom leaf: y = x * weight (per channel)
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.rand(n) + 0.5)

        def forward(self, x):
            return x * self.weight

    def scale_rule(call, ctx):
        (x,) = call.args["args"]
        w = ctx.param(f"{call.module}.weight")
        ctx.unify(w.terms[0], x.terms[-1], call)
        ctx.role(w, 0, "copy", call)
        return autogrow.TensorValue(list(x.terms), x.shape)

    registry = autogrow.default_registry.copy()
    registry.register_module_rule(Scale, scale_rule)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), Scale(6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(4, 3)
    wide = autogrow.widen(model, 2.0, example_inputs=(x,), seed=0, registry=registry)
    assert wide[1].weight.shape == (12,) and _exact(wide, model, (x,))
    assert Scale not in autogrow.default_registry.module_rules  # the copy kept it private


def test_example_inputs_are_inferred_from_the_entry_layer():
    model, _ = _net()
    assert autogrow.analyze(model).group("conv1").width == 8
    with pytest.raises(autogrow.ExampleInputsError, match="example_inputs"):
        autogrow.analyze(nn.Sequential(nn.ReLU()))


def test_shape_pass_on_meta_tensors_matches_a_real_run_and_leaves_parameters_alone():
    from autogrow.tracing import trace

    model, inputs = _net()
    params = {k: v for k, v in model.named_parameters()}
    fake, real = trace(model, inputs, reference=False), trace(model, inputs, reference=True)
    assert fake.reference_output is None and real.reference_output is not None
    assert [fake.meta[n] for n in fake.graph.nodes] == [real.meta[n] for n in real.graph.nodes]
    assert all(v is params[k] and v.device.type == "cpu" for k, v in model.named_parameters())
