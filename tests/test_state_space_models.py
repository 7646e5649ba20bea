"""State-space models (issue 12, section 3): Mamba's inner width ``d_inner`` grows through
``in_proj`` (its x and z halves), the depthwise ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``,
``D`` and ``out_proj``, and the hidden width with it; the state size stays (the scan contracts
the state with ``C``, two activations). The slow path (no CUDA kernels) is what traces on CPU.
"""

from __future__ import annotations

import pytest

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
