"""A grown Hugging Face model always survives save_pretrained -> from_pretrained: growth either
produces an architecture the model's config rebuilds exactly, or is refused (issue: deepening
AlbertForMaskedLM once put an identity stack inside ``predictions.LayerNorm``; the reloaded
model then had missing/unexpected keys and different logits, with no warning)."""

from __future__ import annotations

import pytest
import torch
from test_transformers import BUILDERS, _assert_round_trip, _inputs, _model, _out

import autogrow
from autogrow.verify import relative_error

transformers = pytest.importorskip("transformers")  # in the dev extra: always present in CI


def _albert():
    cfg = transformers.AlbertConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.AlbertForMaskedLM(cfg).eval()


def _round_trip_or_refused(grow, model, kind, tmp_path) -> str:
    try:
        grown = grow(model)
    except autogrow.AutogrowError:
        return "refused"
    x = _inputs(kind, seed=3)
    assert relative_error(_out(grown, x), _out(model, x)) < 1e-4
    _assert_round_trip(grown, kind, tmp_path)
    return "grown"


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_widen_x1_5_round_trips_or_is_refused(kind, tmp_path):
    model = _model(kind)
    grow = lambda m: autogrow.widen(m, 1.5, example_inputs=_inputs(kind), seed=0)  # noqa: E731
    _round_trip_or_refused(grow, model, kind, tmp_path)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "vit"])
def test_deepen_outside_the_layer_stacks_is_refused_not_saved_wrong(kind, tmp_path):
    model = _model(kind)
    # An identity stack after a module the config knows nothing about (the last norm).
    norms = [n for n, m in model.named_modules() if "norm" in type(m).__name__.lower()]
    with pytest.raises(autogrow.ConstraintError, match="cannot describe the deepened"):
        autogrow.deepen(model, after=norms[-1], example_inputs=_inputs(kind))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(autogrow.ConstraintError):
        autogrow.deepen(model, after=norms[-1], example_inputs=_inputs(kind), inplace=True)
    assert model.state_dict().keys() == before.keys()  # the in-place insertion was undone
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_albert_deepen_is_refused_instead_of_reloading_different(tmp_path):
    model = _albert()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with pytest.raises(autogrow.ConstraintError, match="from_pretrained"):
        autogrow.deepen(model, example_inputs=(ids,))
    wide = autogrow.widen(model, 2.0, example_inputs=(ids,), seed=0)  # width still works
    wide.save_pretrained(tmp_path)
    loaded = type(wide).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert relative_error(loaded(ids).logits, wide(ids).logits) == 0.0
