"""Import paths from before the layered redesign keep working (they re-export the moved names),
and the moved names are the very same objects."""

from __future__ import annotations

import importlib

import pytest

OLD_TO_NEW = [
    ("autogrow.graph.terms", "AxisStore", "autogrow.axes.store"),
    ("autogrow.graph.terms", "Atom", "autogrow.axes.terms"),
    ("autogrow.graph.terms", "cat", "autogrow.axes.terms"),
    ("autogrow.graph.build", "RuleContext", "autogrow.rules.context"),
    ("autogrow.graph.build", "Analysis", "autogrow.rules.context"),
    ("autogrow.graph.build", "COPY", "autogrow.rules.context"),
    ("autogrow.integrations.transformers", "is_hf_model", "autogrow.adapters.transformers"),
    ("autogrow.integrations.transformers", "layer_stacks", "autogrow.adapters.transformers"),
    ("autogrow.checkpoint.recipe", "record_step", "autogrow.transforms.lineage"),
    ("autogrow.checkpoint.recipe", "Recipe", "autogrow.transforms.lineage"),
    ("autogrow.transforms.widen", "grow_tensor", "autogrow.transforms.axis_maps"),
    ("autogrow.transforms.widen", "chain_undo", "autogrow.transforms.skeleton"),
    ("autogrow.transforms.deepen", "deepen", "autogrow.transforms.depth.api"),
    ("autogrow.transforms.deepen", "InsertionPoint", "autogrow.transforms.depth.points"),
    ("autogrow.transforms.identity", "identity_linear", "autogrow.transforms.depth.identity"),
    ("autogrow.transforms.mapping", "new_size", "autogrow.axes.sizes"),
]


@pytest.mark.parametrize(("old", "name", "new"), OLD_TO_NEW)
def test_old_import_path_gives_the_moved_object(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(new), name
    )


def test_default_registry_is_built_once_and_shared():
    import autogrow
    from autogrow import rules

    assert autogrow.default_registry is rules.default_registry is rules.get_default_registry()
    fresh = rules.build_default_registry()
    assert (
        fresh is not autogrow.default_registry
        and fresh.rules.keys() == rules.default_registry.rules.keys()
    )
