"""A representative subset of benchmarks/timm_table.py (docs/timm.md): widen ×1.5, ×2 and
deepen with ``verify=False`` on timm models, random init, each model's own input size; every
growth is preserved (checked by ``autogrow.verify``) or refused with an AutogrowError, never
wrong. The models cover: an exported ViT, attribute-sized attention (xcit), a refusal naming
the line (efficientformerv2), ghost modules, cross-covariance and conv/attention hybrids."""

from __future__ import annotations

import pytest

MODELS = [
    ("vision_transformer", "test_vit"),
    ("dla", "dla46x_c"),
    ("mobilevit", "mobilevit_xxs"),
    ("ghostnet", "ghostnet_050"),
    ("convnext", "convnext_zepto_rms"),
    ("xcit", "xcit_nano_12_p8_224"),
    ("efficientformer_v2", "efficientformerv2_s0"),
    ("efficientvit_mit", "efficientvit_b0"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "name"), MODELS)
def test_timm_growth_is_preserved_or_refused(module, name):
    pytest.importorskip("timm")
    from benchmarks.timm_table import run_model

    rows = run_model(module, name)
    assert [r["op"] for r in rows] == ["widen x1.5", "widen x2.0", "deepen"]
    for row in rows:
        assert row["outcome"] in ("preserved", "refused"), row
        if row["outcome"] == "refused":
            # the message names the op and its module
            assert "op '" in row["detail"] or "module" in row["detail"], row
