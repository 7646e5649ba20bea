"""The ``autogrow`` command line: inspect, widen, deepen, saved models grown again, errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import MLP

import autogrow
from autogrow import cli
from autogrow.checkpoint.recipe import recipe_of
from autogrow.verify import compare, run

RESNET = ["torchvision:resnet18", "--num-classes", "10", "--input-shape", "1,3,32,32"]
TESTS = Path(__file__).parent


def reported_error(out: str) -> float:
    return float(re.search(r"max relative error of the outputs.*: (\S+)", out).group(1))


def test_inspect_prints_groups_and_block_points(capsys):
    assert cli.main(["inspect", *RESNET]) == 0
    out = capsys.readouterr().out
    assert "width groups" in out and "layer3.0.conv2" in out and "12 widenable groups" in out
    assert "insertion points" in out and "a copy of layer4.1" in out


def test_inspect_json(capsys):
    assert cli.main(["inspect", "models:MLP", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    widenable = {g["name"]: g["width"] for g in data["groups"] if g["frozen"] is None}
    assert widenable == {"fc1": 16, "fc2": 16}
    assert {p["where"] for p in data["insertion_points"]} >= {"fc1", "fc2"}


def test_widen_saves_a_loadable_model_and_deepen_grows_it_again(tmp_path, capsys):
    wide_dir, deep_dir = tmp_path / "wide", tmp_path / "deep"
    assert (
        cli.main(["widen", *RESNET, "--factor", "1.5", "--seed", "7", "--out", str(wide_dir)]) == 0
    )
    out = capsys.readouterr().out
    assert "parameters: 11,181,642 -> " in out and reported_error(out) < 1e-4
    wide = autogrow.load(wide_dir)
    assert wide.conv1.out_channels == 96 and wide.fc.out_features == 10
    step = recipe_of(wide).steps[0]
    assert (step.op, step.args["factor"], step.args["seed"]) == ("widen", 1.5, 7)

    args = ["deepen", str(wide_dir), "--after", "layer2", "-n", "2", "--out", str(deep_dir)]
    assert cli.main([*args, "--input-shape", "1,3,32,32"]) == 0
    assert reported_error(capsys.readouterr().out) < 1e-4
    deep = autogrow.load(deep_dir)
    assert len(deep.layer2) == len(wide.layer2) + 2
    assert [s.op for s in recipe_of(deep).steps] == ["widen", "deepen"]
    x = (torch.randn(2, 3, 32, 32),)
    assert compare(run(deep, x), run(wide, x)).max_error < 1e-4


def test_widen_by_width_with_factory_kwargs(tmp_path, capsys):
    out_dir = tmp_path / "mlp"
    args = ["widen", "models:MLP", "--kwargs", '{"d_in": 6}', "--width", "fc1=40", "--width"]
    assert cli.main([*args, "fc2=1.5", "--out", str(out_dir)]) == 0
    model = autogrow.load(out_dir, trust=True)  # models:MLP, this test suite's own factory
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (6, 40, 24)
    assert recipe_of(model).steps[0].args["factor"] == {"fc1": 40, "fc2": 1.5}


def test_without_out_nothing_is_saved(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["deepen", "models:MLP"]) == 0
    assert "not saved" in capsys.readouterr().out and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["widen", "no_such_model", "--factor", "2"], "does not exist as a checkpoint directory"),
        (["widen", "torchvision:no_such_net", "--factor", "2"], "building torchvision:no_such"),
        (["widen", "models:MLP", "--factor", "0.5"], "factor must be"),
        (["widen", "models:MLP", "--width", "fc1"], "NAME=WIDTH"),
        (["widen", "models:MLP", "--width", "nope=3"], "'nope' names no width group"),
        (["inspect", "models:MLP", "--input-shape", "1,x"], "--input-shape must be"),
        (["inspect", "models:MLP", "--kwargs", "[1]"], "--kwargs must be a JSON object"),
        (["deepen", "models:MLP", "--after", "nothing"], "has no submodule 'nothing'"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("autogrow: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "inspect" in capsys.readouterr().out


def test_debug_shows_the_exception():
    with pytest.raises(autogrow.InvalidArgumentError, match="factor must be"):
        cli.main(["--debug", "widen", "models:MLP", "--factor", "0.5"])


def test_search_stubs_without_optuna(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    assert cli.main(["search", "space.py", "--trials", "3"]) == 2
    err = capsys.readouterr().err
    assert "optuna is not installed" in err and "pip install 'autogrow[search]'" in err


def test_installed_script_and_python_m(tmp_path):
    script = Path(sys.executable).parent / "autogrow"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    done = subprocess.run(
        [str(script), "widen", "models:MLP", "--factor", "2", "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before = sum(p.numel() for p in MLP().parameters())
    assert f"parameters: {before:,} -> " in done.stdout
    assert autogrow.load(tmp_path / "m", trust=True).fc1.out_features == 32
    done = subprocess.run(
        [sys.executable, "-m", "autogrow", "widen", "models:MLP", "--factor", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("autogrow: error: factor must be")


ROOT = Path(__file__).resolve().parent.parent


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in done.stdout.split()}


def test_import_autogrow_loads_no_optional_package():
    loaded = _loaded_after("import autogrow")
    heavy = {"torchvision", "transformers", "optuna", "timm", "matplotlib", "torch"}
    assert not loaded & heavy
    assert "torch" in _loaded_after("import autogrow; autogrow.widen")  # on first use


def test_help_does_not_import_torch():
    loaded = _loaded_after(
        "import contextlib, io\n"
        "from autogrow import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.build_parser().format_help()\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass"
    )
    assert "autogrow" in loaded and "torch" not in loaded and "optuna" not in loaded
