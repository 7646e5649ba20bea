"""State-space models (issue 12, section 3): Mamba's inner width ``d_inner`` grows through
``in_proj`` (its x and z halves), the depthwise ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
``D`` and ``out_proj``, and the hidden width with it; the state size stays (the scan contracts
the state with ``C``, two activations). The slow path (no CUDA kernels) is what traces on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autogrow
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI

from benchmarks.hf_families import inputs, output, tiny  # noqa: E402 - needs transformers


@pytest.mark.slow
def test_mamba_x2_grows_every_tensor_of_the_inner_width(tmp_path):
    model = tiny("mamba")
    grown = autogrow.widen(model, 2.0, example_inputs=inputs("mamba"), seed=0)  # verify on
    x = inputs("mamba", seed=3)
    assert relative_error(output(grown, x), output(model, x)) < 1e-4
    old, new = model.config, grown.config
    hidden, inner, rank = 2 * old.hidden_size, 2 * old.intermediate_size, 2 * old.time_step_rank
    assert (new.hidden_size, new.intermediate_size, new.time_step_rank) == (hidden, inner, rank)
    assert new.state_size == old.state_size and new.conv_kernel == old.conv_kernel
    mixer = grown.backbone.layers[0].mixer
    state, kernel = old.state_size, old.conv_kernel
    assert mixer.in_proj.weight.shape == (2 * inner, hidden)  # x and z halves
    assert mixer.conv1d.weight.shape == (inner, 1, kernel) and mixer.conv1d.groups == inner
    assert mixer.x_proj.weight.shape == (rank + 2 * state, inner)
    assert mixer.dt_proj.weight.shape == (inner, rank)
    assert mixer.A_log.shape == (inner, state) and mixer.D.shape == (inner,)
    assert mixer.out_proj.weight.shape == (hidden, inner)
    grown.save_pretrained(tmp_path)
    loaded = type(grown).from_pretrained(tmp_path).eval()
    assert relative_error(output(loaded, x), output(grown, x)) == 0.0


class _Scan(nn.Module):
    """A diagonal linear recurrence from a zero initial state, as a selective scan runs it."""

    def __init__(self, literal_state: bool = False) -> None:
        super().__init__()
        self.literal_state = literal_state
        if not literal_state:
            self.state_size = 8  # what widen updates, as Mamba's intermediate_size
        self.inp = nn.Linear(3, 8)
        self.decay = nn.Parameter(torch.randn(8))
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        width = 8 if self.literal_state else h.size(2)
        state = torch.zeros(h.size(0), width)
        states = []
        for t in range(4):
            state = state * torch.sigmoid(self.decay) + h[:, t]
            states.append(state)
        return self.out(torch.stack(states, 1))


def test_a_zero_state_whose_size_a_module_attribute_holds_takes_its_units():
    # torch.zeros with sizes read from a tensor sends fx to torch.export, whose graph shows
    # only the number 8: the module's int attribute of that value says the size may follow
    model, x = _Scan().eval(), (torch.randn(2, 4, 3),)
    wide = autogrow.widen(model, 2.0, example_inputs=x)  # verify on
    assert wide.decay.shape == (16,) and wide.inp.out_features == 16 and wide.state_size == 16
    assert relative_error(wide(*x), model(*x)) < 1e-4


def test_a_zero_state_of_a_size_written_in_code_keeps_that_size():
    model, x = _Scan(literal_state=True).eval(), (torch.randn(2, 4, 3),)
    assert not autogrow.analyze(model, x).group("inp").widenable
