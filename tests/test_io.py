"""autogrow.save / autogrow.load: round trips after growth, the recipe models carry, no pickle,
clear errors for checkpoints that cannot be rebuilt, and factories called only when allowed."""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from models import MLP, ResidualMLP, randomize_norms
from torch import nn

import autogrow
from autogrow import CheckpointError
from autogrow.checkpoint.io import read_info
from autogrow.checkpoint.recipe import recipe_of
from autogrow.testing import randomize_constant_tensors


class TiedLM(nn.Module):
    """Embedding -> MLP -> logits through the embedding matrix (tied weights)."""

    def __init__(self, vocab: int = 20, d: int = 8, hidden: int = 6):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(self.down(F.relu(self.up(self.embed(ids)))))


def tiny_gpt2() -> nn.Module:
    """A two-layer GPT-2 whose lm_head is tied to the token embedding (transformers' way)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16)
    config.bos_token_id = config.eos_token_id = 0
    return GPT2LMHeadModel(config)


@pytest.fixture(autouse=True)
def trusted_test_factories():
    """These tests' own seed factories are registered, as a user registers theirs; the tests
    of the allow-list use factories that are not."""
    factories = (MLP, ResidualMLP, TiedLM, tiny_gpt2)
    for f in factories:
        autogrow.register_factory(f)
    yield
    for f in factories:
        autogrow.unregister_factory(f)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Same class, same tensors (names, shapes, strides, dtypes, values), and bit-identical
    outputs in eval mode on one and the same input tensor ``x`` (what a checkpoint promises:
    an equal input at another address may take another kernel path, see autogrow.load)."""
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert sa[name].stride() == sb[name].stride(), name
        assert torch.equal(sa[name], sb[name]), name
    assert torch.equal(outputs(a, x), outputs(b, x))


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    model = autogrow.seed_model("torchvision.models:get_model", name="resnet18", num_classes=10)
    return randomize_constant_tensors(model).eval(), torch.randn(2, 3, 32, 32)


def test_mlp_round_trip(tmp_path):
    torch.manual_seed(0)
    model = autogrow.seed_model("models:MLP", d_in=6, hidden=8, d_out=3)
    path = autogrow.save(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "recipe.json"]
    loaded = autogrow.load(path)
    assert_same_model(model, loaded, torch.randn(4, 6))


def test_after_widen_round_trip(tmp_path, resnet):
    model, x = resnet
    wide = autogrow.widen(model, 1.5, example_inputs=(x[:1],), seed=3)
    loaded = autogrow.load(autogrow.save(wide, tmp_path))
    assert loaded.conv1.out_channels == wide.conv1.out_channels > model.conv1.out_channels
    assert_same_model(wide, loaded, x)


def test_after_deepen_round_trip(tmp_path, resnet):
    model, x = resnet
    deep = autogrow.deepen(model, example_inputs=(x[:1],))
    loaded = autogrow.load(autogrow.save(deep, tmp_path))
    assert len(loaded.layer1) == len(deep.layer1) == len(model.layer1) + 1
    assert_same_model(deep, loaded, x)


def test_widen_deepen_widen_chain_round_trip(tmp_path, resnet):
    model, x = resnet
    inputs = (x[:1],)
    grown = autogrow.widen(model, 1.5, example_inputs=inputs)  # seed drawn by widen
    grown = autogrow.deepen(grown, after=["layer2", "fc"], n=2, example_inputs=inputs)
    grown = autogrow.widen(grown, {"conv1": 1.25}, example_inputs=inputs, symmetry="none")
    assert [s.op for s in recipe_of(grown).steps] == ["widen", "deepen", "widen"]
    loaded = autogrow.load(autogrow.save(grown, tmp_path))
    assert_same_model(grown, loaded, x)
    assert recipe_of(loaded) == recipe_of(grown)


def test_loaded_model_grows_and_saves_again(tmp_path):
    torch.manual_seed(0)
    model = randomize_norms(autogrow.seed_model("models:ResidualMLP", depth=1))
    first = autogrow.load(autogrow.save(autogrow.widen(model, 2.0), tmp_path / "a"))
    again = autogrow.deepen(first, n=2)
    loaded = autogrow.load(autogrow.save(again, tmp_path / "b"))
    assert len(loaded.blocks) == 3
    assert [s.op for s in recipe_of(loaded).steps] == ["widen", "deepen"]
    assert_same_model(again, loaded, torch.randn(3, 12))


def test_tied_weights_stay_tied(tmp_path):
    torch.manual_seed(0)
    model = autogrow.seed_model(TiedLM)
    wide = autogrow.widen(model, 2.0, seed=0)
    loaded = autogrow.load(autogrow.save(wide, tmp_path))
    assert loaded.out.weight is loaded.embed.weight and loaded.up.out_features == 12
    assert_same_model(wide, loaded, torch.randint(0, 20, (2, 5)))


def test_transformers_model_round_trip(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    model = autogrow.seed_model(tiny_gpt2).eval()
    grown = autogrow.widen(model, 2.0, example_inputs=(ids[:1],), seed=0)
    loaded = autogrow.load(autogrow.save(grown, tmp_path))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert loaded.config.n_embd == grown.config.n_embd == 64
    with torch.no_grad():  # one input tensor for both models: see assert_same_model
        assert torch.equal(loaded.eval()(ids).logits, grown.eval()(ids).logits)


def test_dtype_training_flag_and_frozen_parameters_are_restored(tmp_path):
    torch.manual_seed(0)
    model = autogrow.seed_model("models:MLP", d_in=6, hidden=8, d_out=3).double()
    wide = autogrow.widen(model, 1.5, seed=0).train()
    wide.fc1.weight.requires_grad_(False)
    loaded = autogrow.load(autogrow.save(wide, tmp_path))
    assert loaded.training and all(m.training for m in loaded.modules())
    assert [n for n, p in loaded.named_parameters() if not p.requires_grad] == ["fc1.weight"]
    assert loaded.fc2.weight.dtype == torch.float64
    assert_same_model(wide, loaded, torch.randn(4, 6, dtype=torch.float64))


def test_load_never_unpickles(tmp_path, monkeypatch, resnet):
    model, x = resnet
    inputs = (x[:1],)
    grown = autogrow.deepen(
        autogrow.widen(model, 1.25, example_inputs=inputs), example_inputs=inputs
    )
    path = autogrow.save(grown, tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("load unpickled something")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads")]:
        monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert_same_model(grown, autogrow.load(path), x)


def test_widen_records_the_seed_it_drew():
    torch.manual_seed(0)
    model = autogrow.seed_model("models:MLP")
    a = autogrow.widen(model, 1.5)
    step = recipe_of(a).steps[-1]
    assert step.op == "widen" and isinstance(step.args["seed"], int)
    b = autogrow.widen(model, 1.5, seed=step.args["seed"])
    assert_same_model(a, b, torch.randn(3, 10))


def test_recipe_is_per_model_and_not_in_state_dict():
    model = autogrow.seed_model("models:MLP")
    seed_recipe = recipe_of(model)
    child = autogrow.widen(model, 2.0, seed=0)
    grandchild = autogrow.deepen(child)
    assert recipe_of(model) == seed_recipe and seed_recipe.steps == ()
    assert recipe_of(child).steps == recipe_of(grandchild).steps[:1]
    assert [s.op for s in recipe_of(grandchild).steps] == ["widen", "deepen"]
    assert recipe_of(copy.deepcopy(grandchild)) == recipe_of(grandchild)
    assert not any("recipe" in k for k in grandchild.state_dict())
    # deepen records where it inserted (resolved), not after=None
    assert recipe_of(grandchild).steps[1].args["after"] == [["fc2", "identity"]]


def test_inplace_growth_records_on_the_model():
    model = autogrow.seed_model("models:MLP")
    same = autogrow.widen(model, 2.0, seed=0, inplace=True)
    assert same is model and [s.op for s in recipe_of(model).steps] == ["widen"]


def test_extra_metadata_is_stored(tmp_path):
    model = autogrow.seed_model("models:MLP")
    info = read_info(autogrow.save(model, tmp_path, extra={"trial": 3, "acc": [0.5, 0.75]}))
    assert info["extra"] == {"trial": 3, "acc": [0.5, 0.75]}
    assert info["factory"] == "models:MLP" and info["autogrow_version"] == autogrow.__version__


def test_factory_given_at_save_for_a_model_built_otherwise(tmp_path):
    from models import MLP

    torch.manual_seed(0)
    wide = autogrow.widen(MLP(d_in=6), 1.5, seed=1)
    with pytest.raises(CheckpointError, match="no known factory.*seed_model"):
        autogrow.save(wide, tmp_path)
    path = autogrow.save(wide, tmp_path, factory=MLP, factory_kwargs={"d_in": 6})
    assert read_info(path)["factory"] == "models:MLP"
    assert_same_model(wide, autogrow.load(path), torch.randn(2, 6))


def test_bad_factories_are_refused():
    with pytest.raises(autogrow.InvalidArgumentError, match="package.module:callable"):
        autogrow.seed_model("torch.nn.Linear", in_features=2, out_features=2)
    with pytest.raises(autogrow.InvalidArgumentError, match="cannot import"):
        autogrow.seed_model("no_such_module_xyz:build")
    with pytest.raises(autogrow.InvalidArgumentError, match="cannot be imported by name"):
        autogrow.seed_model(lambda: nn.Linear(2, 2))
    with pytest.raises(autogrow.InvalidArgumentError, match="JSON"):
        autogrow.seed_model("torch.nn:Linear", in_features=2, out_features=2, device=object())
    with pytest.raises(autogrow.InvalidArgumentError, match="not a Python callable"):
        autogrow.seed_model("os:system", command="true")


def test_hand_modified_model_is_refused_at_save(tmp_path):
    model = autogrow.seed_model("models:MLP")
    model.fc = nn.Linear(16, 7)
    with pytest.raises(CheckpointError, match="not what its recipe rebuilds.*fc.weight"):
        autogrow.save(model, tmp_path / "a")
    path = autogrow.save(model, tmp_path / "b", check=False)
    with pytest.raises(CheckpointError, match=r"do not fit.*fc.weight: file \(7, 16\)"):
        autogrow.load(path)


def test_bad_checkpoints_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        autogrow.load(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="has no recipe.json"):
        autogrow.load(tmp_path)
    path = autogrow.save(autogrow.seed_model("models:MLP"), tmp_path / "ok")
    recipe = path / "recipe.json"
    info = json.loads(recipe.read_text())

    recipe.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        autogrow.load(path)
    recipe.write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        autogrow.load(path)
    recipe.write_text(json.dumps({**info, "factory": "no_such_module_xyz:build"}))
    with pytest.raises(CheckpointError, match="'no_such_module_xyz:build' is not on"):
        autogrow.load(path)
    with pytest.raises(CheckpointError, match="cannot import factory"):
        autogrow.load(path, trust=True)
    recipe.write_text(json.dumps({**info, "factory": "torchvision.models:no_such_net"}))
    with pytest.raises(CheckpointError, match="cannot import factory"):
        autogrow.load(path)
    recipe.write_text(json.dumps({**info, "factory_kwargs": {"d_out": 7}}))
    with pytest.raises(CheckpointError, match="fc.weight: file \\(5, 16\\), rebuilt model"):
        autogrow.load(path)
    recipe.write_text(json.dumps({**info, "steps": [{"op": "shrink", "args": {}}]}))
    with pytest.raises(CheckpointError, match="unknown step 'shrink'"):
        autogrow.load(path)
    recipe.write_text(json.dumps(info))
    (path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="cannot read"):
        autogrow.load(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        autogrow.load(path)


# --- which factories a checkpoint may call ------------------------------------------------------


def small_net(width: int = 4) -> nn.Module:
    """A factory of these tests that is neither allow-listed nor registered."""
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def forge(tmp_path: Path, factory: str, kwargs: dict) -> Path:
    """A valid checkpoint whose recipe.json was then edited to name ``factory(**kwargs)``."""
    path = autogrow.save(
        autogrow.seed_model("torch.nn:Linear", in_features=2, out_features=2), tmp_path / "forged"
    )
    info = json.loads((path / "recipe.json").read_text())
    info.update(factory=factory, factory_kwargs=kwargs)
    (path / "recipe.json").write_text(json.dumps(info))
    return path


def test_a_malicious_recipe_runs_nothing_unless_trusted(tmp_path):
    marker = tmp_path / "owned"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    path = forge(tmp_path, "subprocess:run", {"args": command})
    with pytest.raises(CheckpointError) as refused:
        autogrow.load(path)
    message = str(refused.value)
    assert "'subprocess:run' is not on autogrow's allow-list" in message
    assert "trust=True" in message and "autogrow.register_factory('subprocess:run')" in message
    assert not marker.exists()
    # trust=True calls whatever the recipe names, as before: here it ran the command
    with pytest.raises(CheckpointError, match="returned CompletedProcess, not an nn.Module"):
        autogrow.load(path, trust=True)
    assert marker.exists()


def test_a_module_outside_the_allow_list_is_not_even_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_factories.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef build():\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = forge(tmp_path, "evil_factories:build", {})
    with pytest.raises(CheckpointError, match="module evil_factories is outside"):
        autogrow.load(path)
    assert not marker.exists() and "evil_factories" not in sys.modules


@pytest.mark.parametrize(
    ("factory", "kwargs", "reason"),
    [
        ("os:system", {"command": "true"}, "module os is outside"),
        ("torch.nnx:Linear", {}, "module torch.nnx is outside"),
        ("torch.nn:functional.relu", {}, "not a model class or model builder of torch.nn"),
        ("torch.nn:functional.torch.hub.load", {}, "'torch' leads out of torch.nn"),
        ("torch.nn:Module.load_state_dict", {}, "not a model class or model builder"),
        ("torchvision.models:resnet.WeightsEnum", {}, "not a model class or model builder"),
        ("transformers:AutoModel.from_pretrained", {"pretrained_model_name_or_path": "x"}, "not"),
        ("transformers:pipeline", {"task": "text-generation"}, "not a model class"),
        ("timm:models.load_checkpoint", {}, "not a model class or model builder of timm"),
        ("timm:create_model", {"model_name": "hf-hub:someone/net"}, "fetch a model from a hub"),
        ("timm:create_model", {"model_name": "resnet18", "checkpoint_path": "w.pth"}, "read a"),
    ],
)
def test_factories_outside_the_allow_list_are_refused(tmp_path, factory, kwargs, reason):
    pytest.importorskip(factory.partition(":")[0].split(".")[0])
    with pytest.raises(CheckpointError, match=f"{factory!r} is not on.*{reason}"):
        autogrow.load(forge(tmp_path, factory, kwargs))


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        ("torch.nn:Linear", {"in_features": 2, "out_features": 2}),
        ("torchvision.models:resnet18", {"num_classes": 3}),
        ("torchvision.models:get_model", {"name": "resnet18", "num_classes": 3}),
        ("timm:create_model", {"model_name": "resnet18", "num_classes": 3}),
        ("timm:models.resnet.resnet18", {"num_classes": 3}),
        ("autogrow.search.models:mlp", {"in_features": 2, "hidden": [3], "num_classes": 2}),
        ("transformers:GPT2LMHeadModel", {}),
    ],
)
def test_allow_listed_factories_resolve_without_trust(factory, kwargs):
    from autogrow.checkpoint.trust import allowed_factory

    pytest.importorskip(factory.partition(":")[0].split(".")[0])
    assert callable(allowed_factory(factory, kwargs))


def test_a_registered_factory_loads_without_trust(tmp_path):
    torch.manual_seed(0)
    wide = autogrow.widen(autogrow.seed_model(small_net, width=3), 2.0, seed=0)
    path = autogrow.save(wide, tmp_path)
    with pytest.raises(CheckpointError, match="small_net"):
        autogrow.load(path)
    assert_same_model(wide, autogrow.load(path, trust=True), torch.randn(4, 3))
    assert autogrow.register_factory(small_net) is small_net
    try:
        assert_same_model(wide, autogrow.load(path), torch.randn(4, 3))
    finally:
        autogrow.unregister_factory(small_net)
    with pytest.raises(CheckpointError, match="small_net"):
        autogrow.load(path)


def test_the_cli_refuses_an_untrusted_checkpoint_without_trust(tmp_path, capsys):
    from autogrow import cli

    marker = tmp_path / "owned"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    path = forge(tmp_path, "subprocess:run", {"args": command})
    assert cli.main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'subprocess:run' is not on autogrow's allow-list" in err and "--trust" in err
    assert not marker.exists()
    path = autogrow.save(autogrow.seed_model(small_net), tmp_path / "mine")
    assert cli.main(["deepen", str(path), "--out", str(tmp_path / "deeper")]) == 2
    assert "--trust" in capsys.readouterr().err
    assert cli.main(["deepen", str(path), "--trust", "--out", str(tmp_path / "deeper")]) == 0
    assert "trust=True))" in capsys.readouterr().out
    assert len(autogrow.load(tmp_path / "deeper", trust=True)) > len(small_net())
