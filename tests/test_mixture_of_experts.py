"""Mixtures of experts (issue 12, section 3): experts stored as stacked 3-D parameters and run
through ``grouped_mm`` widen like any FFN (every expert's intermediate axis, the hidden axis
through the router and the shared expert), and deepen zeroes every expert's output projection.

The expert axis of a stacked parameter indexes whole matrices, so it is no width axis: the
number of experts (and so the routing) never changes. Each grown model is compared with the
original on fresh inputs, its config rebuilds its shapes, and save_pretrained /
from_pretrained reloads it exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autogrow
from autogrow.graph.fill import fill_ratio
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI

from benchmarks.hf_families import inputs, output, tiny  # noqa: E402 - needs transformers

# (family, factor) -> (fields that grow by the factor, fields that keep their value)
GROWS = {
    ("qwen2-moe", 2.0): (
        ["hidden_size", "moe_intermediate_size", "shared_expert_intermediate_size"],
        ["num_experts", "num_experts_per_tok"],
    ),
    ("qwen2-moe", 1.5): (  # RMSNorm: hidden grows by zero-filled units through the experts
        ["hidden_size", "moe_intermediate_size", "shared_expert_intermediate_size"],
        ["num_experts", "num_experts_per_tok"],
    ),
    ("mixtral", 2.0): (
        ["hidden_size", "intermediate_size", "num_attention_heads"],
        ["num_local_experts", "num_experts_per_tok"],
    ),
    ("mixtral", 1.5): (
        ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"],
        ["num_local_experts", "num_experts_per_tok"],
    ),
}


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _exact_and_reloadable(model: nn.Module, grown: nn.Module, name: str, tmp_path) -> None:
    x = inputs(name, seed=3)  # fresh inputs, not the ones the transform verified on
    assert relative_error(output(grown, x), output(model, x)) < 1e-4
    with torch.device("meta"):
        rebuilt = type(grown)(grown.config)
    assert _shapes(rebuilt) == _shapes(grown)
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path).eval()
    assert relative_error(output(loaded, x), output(grown, x)) == 0.0


@pytest.mark.filterwarnings("ignore::autogrow.GrowthWarning")  # partial growth is expected
@pytest.mark.parametrize("name, factor", sorted(GROWS))
def test_widen_grows_every_expert_and_keeps_the_routing(name, factor, tmp_path):
    model = tiny(name)
    grown = autogrow.widen(model, factor, example_inputs=inputs(name), seed=0)  # verify on
    _exact_and_reloadable(model, grown, name, tmp_path)
    grows, keeps = GROWS[(name, factor)]
    for field in grows:
        assert getattr(grown.config, field) == int(getattr(model.config, field) * factor), field
    for field in keeps:
        assert getattr(grown.config, field) == getattr(model.config, field), field
    hidden = model.config.hidden_size, grown.config.hidden_size
    eps = model.config.rms_norm_eps * fill_ratio(*hidden)  # zero-filled units: eps times ρ
    assert grown.config.rms_norm_eps == pytest.approx(eps, rel=1e-12)
    old = model.model.layers[0].mlp.experts
    new = grown.model.layers[0].mlp.experts
    hidden, inner = grown.config.hidden_size, new.intermediate_dim
    assert new.gate_up_proj.shape == (old.num_experts, 2 * inner, hidden)
    assert new.down_proj.shape == (old.num_experts, hidden, inner)
    assert inner == int(old.intermediate_dim * factor)


@pytest.mark.parametrize("name", ["qwen2-moe", "mixtral"])
def test_deepen_zeroes_every_expert_output_projection(name, tmp_path):
    model = tiny(name)
    deeper = autogrow.deepen(model, example_inputs=inputs(name))  # verify on
    _exact_and_reloadable(model, deeper, name, tmp_path)
    assert deeper.config.num_hidden_layers == model.config.num_hidden_layers + 1
    new = deeper.model.layers[-1].mlp
    assert new.experts.down_proj.abs().sum() == 0  # every expert at once
    assert new.experts.gate_up_proj.abs().sum() > 0  # the rest keeps its trained values
    shared = getattr(new, "shared_expert", None)
    if shared is not None:
        assert shared.down_proj.weight.abs().sum() == 0


class _GroupedExperts(nn.Module):
    """Three experts as stacked parameters, one read through a transpose; tokens already
    grouped by expert (``offs`` ends each expert's rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.up = nn.Parameter(torch.randn(3, 8, 16))  # [experts, in, out]
        self.down = nn.Parameter(torch.randn(3, 8, 16))  # [experts, out, in]
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offs = torch.tensor([2, 4, 6], dtype=torch.int32)
        h = F.relu(F.grouped_mm(self.inp(x), self.up, offs=offs))
        return self.out(F.grouped_mm(h, self.down.transpose(-2, -1), offs=offs))


def test_grouped_mm_widens_per_expert_axes_but_never_the_expert_axis():
    model = _GroupedExperts().eval()
    x = (torch.randn(6, 4),)
    graph = autogrow.analyze(model, x)
    assert not graph.analysis.blocked
    expert_axes = {(m.param, m.dim) for g in graph.groups for m in g.members if m.dim == 0}
    assert ("up", 0) not in expert_axes and ("down", 0) not in expert_axes
    wide = autogrow.widen(model, 2.0, example_inputs=x)  # verify on
    assert wide.up.shape == (3, 16, 32) and wide.down.shape == (3, 16, 32)
    assert relative_error(wide(*x), model(*x)) < 1e-4
