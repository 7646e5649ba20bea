"""A representative subset of benchmarks/timm_table.py (docs/timm.md): widen ×1.5, ×2 and
deepen with ``verify=False`` on timm models, random init, each model's own input size; every
growth is preserved (checked by ``autogrow.verify``) or refused with an AutogrowError, never
wrong. The models cover: an exported ViT, a deep aggregation net, a conv/attention hybrid, ghost
modules, cross-covariance attention sized by attributes (xcit), literal sizes whose attribute
sizes heads in two groups (efficientformerv2: those heads keep their width and the rest grows;
its deepen reads an assertion message fx formats from node names), attention whose head size is
computed from the input's width in a model only torch.export captures (convit:
``C // self.num_heads``, tied by tracing the module alone), and fx's
numbered tensor constants shifting in a deepened ViT (eva)."""

from __future__ import annotations

import pytest

MODELS = [
    ("vision_transformer", "test_vit"),
    ("dla", "dla46x_c"),
    ("mobilevit", "mobilevit_xxs"),
    ("ghostnet", "ghostnet_050"),
    ("xcit", "xcit_nano_12_p8_224"),
    ("efficientformer_v2", "efficientformerv2_s0"),
    ("convit", "convit_tiny"),
    ("eva", "vit_tiny_patch16_dinov3_qkvb"),
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
