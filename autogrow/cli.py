"""The ``autogrow`` command: inspect, widen and deepen models, save them, and run searches.

    autogrow inspect torchvision:resnet50 [--input-shape 1,3,224,224]
    autogrow widen torchvision:resnet18 --factor 1.5 --out wide/ [--seed N]
    autogrow deepen wide/ --after layer2 --out deeper/
    autogrow widen ./llama-dir --factor 2 --out ./llama-wide --max-shard-size 2GB
    autogrow search SPACE.py ... / autogrow show RUN_DIR   (needs the search extra)

A MODEL is ``torchvision:<name>`` (random weights; ``--num-classes``), ``timm:<name>``,
``package.module:callable`` (``--kwargs`` gives it JSON keyword arguments), or a directory
written by ``autogrow.save`` (to grow a saved model again). A Hugging Face directory
(``config.json`` beside safetensors weights) is grown on disk, shard by shard, without
loading it (``--out`` required). Errors print one line and exit
with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._text import aligned_table
from ._version import __version__
from .errors import AutogrowError, InvalidArgumentError

# torch and the growth machinery are imported by the commands that use them, so that
# `autogrow --help` and argument errors answer at once (benchmarks/startup.py).
if TYPE_CHECKING:
    import torch
    from torch import nn


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``autogrow`` command line; returns the exit status.

    >>> main(["--version"])  # doctest: +ELLIPSIS
    autogrow ...
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"autogrow {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AutogrowError as e:
        if args.debug:
            raise
        print(f"autogrow: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``autogrow`` command (all subcommands registered).

    >>> args = build_parser().parse_args(["widen", "torchvision:resnet18", "--factor", "1.5"])
    >>> args.model, args.factor, args.func.__name__
    ('torchvision:resnet18', 1.5, 'widen_command')
    """
    parser = argparse.ArgumentParser(
        prog="autogrow",
        description=__doc__.split("\n\n")[0],
        epilog="MODEL: torchvision:<name>, timm:<name>, package.module:callable, or a directory "
        "written by autogrow.save. Run `autogrow <command> -h` for a command's options.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="command")

    p = sub.add_parser("inspect", help="width groups and insertion points of a model")
    _model_options(p)
    p.add_argument(
        "--all", action="store_true", help="list frozen groups and every identity point too"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=inspect_command)

    p = sub.add_parser("widen", help="widen a model (Net2WiderNet) and save it")
    _model_options(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--factor", type=float, help="widen every widenable group by this factor")
    how.add_argument(
        "--width",
        action="append",
        metavar="NAME=VALUE",
        help="a group or module name and its new width (int) or factor (float); repeatable",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the random unit mapping")
    p.add_argument(
        "--symmetry",
        choices=["split", "none", "paired"],
        default="split",
        help="split: unequal shares; none: equal shares; paired: equal shares plus zero-sum "
        "noise (+N/-N, exact)",
    )
    p.add_argument(
        "--pair-noise",
        type=float,
        default=0.01,
        help="--symmetry paired: noise scale, relative to each weight tensor's std (0.01)",
    )
    p.add_argument("--noise", type=float, default=0.0, help="Net2Net noise (approximate result)")
    _output_options(p)
    _stream_options(p)
    p.set_defaults(func=widen_command)

    p = sub.add_parser("deepen", help="deepen a model (Net2DeeperNet) and save it")
    _model_options(p)
    p.add_argument(
        "--after",
        action="append",
        metavar="NAME",
        help="where to add depth (see `autogrow inspect`); repeatable; default: the end of "
        "every run of residual blocks, else after the last hidden layer",
    )
    p.add_argument("-n", type=int, default=1, help="blocks or identity stacks per place (1)")
    _output_options(p)
    _stream_options(p)
    p.set_defaults(func=deepen_command)

    p = sub.add_parser(
        "stack",
        help="stack a model's layer stacks with copies of its trained layers (G_stack; "
        "changes the function) and save it",
    )
    _model_options(p)
    p.add_argument("--factor", type=int, default=2, help="each layer stack x FACTOR deep (2)")
    p.add_argument(
        "--order",
        choices=["repeat", "interleave"],
        default="repeat",
        help="repeat: L1..Ln,L1..Ln (default); interleave: L1,L1,L2,L2,...",
    )
    p.add_argument(
        "--stack",
        action="append",
        metavar="NAME",
        help="a container (nn.Sequential/ModuleList) to stack; repeatable; default: the "
        "model's layer stacks",
    )
    _output_options(p)
    p.set_defaults(func=stack_command)

    _add_search_commands(sub)
    return parser


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="torchvision:<name>, timm:<name>, package.module:callable, or a checkpoint directory",
    )
    p.add_argument("--num-classes", type=int, default=None, help="classes of a new model")
    p.add_argument("--kwargs", default=None, help="JSON keyword arguments for the model factory")
    p.add_argument(
        "--trust",
        action="store_true",
        help="load a checkpoint directory whose seed factory is not allow-listed (it can run "
        "any code: only for checkpoints you trust like code)",
    )
    p.add_argument(
        "--input-shape",
        default=None,
        help="example input shape, e.g. 1,3,224,224 (default: inferred from the first layer)",
    )
    p.add_argument(
        "--input-dtype",
        default="float32",
        choices=["float32", "float64", "int64"],
        help="dtype of the example input (int64: token ids 0 and 1)",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="checkpoint directory to save the result to")
    p.add_argument("--no-verify", action="store_true", help="skip the output comparison")


def _stream_options(p: argparse.ArgumentParser) -> None:
    """Options of growing a checkpoint directory on disk (widen, deepen)."""
    p.add_argument(
        "--max-shard-size",
        default="2GB",
        help="bytes per weight file when growing a Hugging Face directory (2GB, 500MB, 1GiB)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists and is not empty (streamed growth)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="grow a directory written by autogrow.save on disk, without loading it "
        "(Hugging Face directories always are)",
    )


def _add_search_commands(sub: Any) -> None:
    """``search``/``show`` from autogrow.search, or stubs saying how to install them."""
    reason = None
    if importlib.util.find_spec("optuna") is None:
        reason = "optuna is not installed"
    else:
        try:
            from .search.commands import add_commands
        except ImportError as e:  # the search package is missing or a dependency is
            reason = str(e)
        else:
            add_commands(sub)
            return

    def unavailable(args: argparse.Namespace) -> int:
        print(
            f"autogrow {args.command} needs the search extra ({reason}): "
            "pip install 'autogrow[search]'",
            file=sys.stderr,
        )
        return 2

    for name in ("search", "show"):
        p = sub.add_parser(name, help=f"unavailable: pip install 'autogrow[search]' ({reason})")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(func=unavailable)


# --------------------------------------------------------------------------------------------
# models and inputs
# --------------------------------------------------------------------------------------------


def build_model(
    spec: str, *, num_classes: int | None = None, kwargs: str | None = None, trust: bool = False
) -> nn.Module:
    """The model a MODEL argument names, carrying a recipe (so it can be saved).

    A factory named on the command line is called (the user chose it); a checkpoint
    directory is loaded with ``autogrow.load(spec, trust=trust)``.

    >>> build_model("torch.nn:Linear", kwargs='{"in_features": 3, "out_features": 2}')
    Linear(in_features=3, out_features=2, bias=True)
    """
    from .checkpoint.io import RECIPE, load
    from .checkpoint.recipe import seed_model

    if Path(spec).is_dir() and (Path(spec) / RECIPE).exists():
        if num_classes is not None or kwargs is not None:
            raise InvalidArgumentError(
                f"{spec} is a saved model; --num-classes and --kwargs apply to new models only"
            )
        return load(spec, trust=trust)
    options = _json_kwargs(kwargs)
    if num_classes is not None:
        options["num_classes"] = num_classes
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        what = (
            "is not a directory written by autogrow.save"
            if Path(spec).exists()
            else ("does not exist as a checkpoint directory")
        )
        raise InvalidArgumentError(
            f"model {spec!r} {what}; name a model as torchvision:<name>, timm:<name> or "
            "package.module:callable"
        )
    if kind == "torchvision":
        _require("torchvision", "vision")
        factory, options = "torchvision.models:get_model", {"name": name, **options}
    elif kind == "timm":
        _require("timm", "timm")
        factory, options = "timm:create_model", {"model_name": name, "pretrained": False, **options}
    else:
        factory = spec
    try:
        return seed_model(factory, **options)
    except AutogrowError:
        raise
    except Exception as e:  # noqa: BLE001 - the factory is user code; say which call failed
        raise InvalidArgumentError(
            f"building {spec} failed: {factory}(**{options}) raised {type(e).__name__}: {e}"
        ) from e


def _json_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"--kwargs is not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"--kwargs must be a JSON object, got {text!r}")
    return value


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise InvalidArgumentError(f"{module} is not installed: pip install 'autogrow[{extra}]'")


def example_inputs(shape: str | None, dtype: str) -> tuple[torch.Tensor, ...] | None:
    """A random input of ``shape`` ("1,3,224,224"), or None to let autogrow infer one.

    >>> example_inputs("2,3", "float32")[0].shape
    torch.Size([2, 3])
    """
    if shape is None:
        return None
    import torch

    try:
        dims = tuple(int(s) for s in shape.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise InvalidArgumentError(
            f"--input-shape must be positive integers separated by commas (1,3,224,224), "
            f"got {shape!r}"
        )
    gen = torch.Generator().manual_seed(0)
    if dtype == "int64":
        return (torch.randint(0, 2, dims, generator=gen),)
    return (torch.randn(dims, generator=gen, dtype=getattr(torch, dtype)),)


def _fresh_like(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Floating inputs redrawn (values the transform never saw); others kept."""
    import torch

    gen = torch.Generator().manual_seed(1)
    return tuple(
        torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if isinstance(x, torch.Tensor) and x.is_floating_point()
        else x
        for x in inputs
    )


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def _load_args(args: argparse.Namespace) -> tuple[nn.Module, tuple | None]:
    model = build_model(
        args.model, num_classes=args.num_classes, kwargs=args.kwargs, trust=args.trust
    )
    return model.eval(), example_inputs(args.input_shape, args.input_dtype)


def inspect_command(args: argparse.Namespace) -> int:
    """``autogrow inspect``: the width-group table and the insertion points.

    >>> inspect_command(build_parser().parse_args(["inspect", "torch.nn:Linear", "--kwargs",
    ...     '{"in_features": 3, "out_features": 2}', "--json"]))  # doctest: +ELLIPSIS
    {
      "groups": [...
    0
    """
    from .graph import analyze
    from .transforms.deepen import insertion_points

    model, inputs = _load_args(args)
    graph = analyze(model, inputs)
    points = insertion_points(model, inputs)
    if args.json:
        data = graph.to_dict()
        data["insertion_points"] = [
            {
                "where": p.where,
                "kind": str(p.kind),
                "inserts": p.inserts,
                "exact_in_train": p.exact_in_train,
            }
            for p in points
        ]
        print(json.dumps(data, indent=2, default=str))
        return 0
    groups = [g for g in graph.groups if args.all or g.widenable]
    frozen = sum(1 for g in graph.groups if not g.widenable)
    rows = [
        (
            g.name,
            str(g.width),
            "widenable" if g.widenable else f"frozen: {g.frozen}",
            "; ".join(g.constraints()),
            _abbrev(g.modules),
        )
        for g in groups
    ]
    note = f"{len(graph.groups) - frozen} widenable groups, {frozen} frozen"
    if frozen and not args.all:
        note += " (--all lists them)"
    _table(
        f"{args.model}: width groups",
        ["group", "width", "status", "constraints", "modules"],
        rows,
        note,
    )
    print()
    # Identity points exist after almost every layer; residual blocks are the interesting ones.
    blocks = [p for p in points if p.kind == "block"]
    shown = points if args.all or not blocks else blocks
    rows = [
        (p.where or "<model>", str(p.kind), p.inserts, "yes" if p.exact_in_train else "eval only")
        for p in shown
    ]
    note = f"{len(points)} insertion points"
    if len(shown) < len(points):
        note += f", {len(points) - len(shown)} identity points not shown (--all lists them)"
    _table(
        f"{args.model}: insertion points (autogrow deepen --after WHERE)",
        ["where", "kind", "inserts", "exact in train"],
        rows,
        note,
    )
    return 0


def widen_command(args: argparse.Namespace) -> int:
    """``autogrow widen``: grow, report parameters and error, save.

    ```bash
    autogrow widen torchvision:resnet18 --factor 1.5 --seed 0 --out wide/
    ```
    """
    from .transforms.widen import widen_with_plan

    factor: Any = args.factor if args.factor is not None else _width_dict(args.width)
    if _streamed(args):
        from .checkpoint.stream import widen_checkpoint

        if args.noise:
            raise InvalidArgumentError("--noise is not available for streamed growth")
        result = widen_checkpoint(
            args.model,
            factor,
            args.out,
            max_shard_size=args.max_shard_size,
            seed=args.seed,
            symmetry=args.symmetry,
            verify=not args.no_verify,
            overwrite=args.overwrite,
            trust=args.trust,
        )
        _report_streamed(args, result, f"widened (seed {result.seed})")
        return 0
    model, inputs = _load_args(args)
    grown = widen_with_plan(
        model,
        factor,
        example_inputs=inputs,
        seed=args.seed,
        symmetry=args.symmetry,
        noise=args.noise,
        pair_noise=args.pair_noise,
        verify=not args.no_verify and args.noise == 0,
    )
    _report(args, model, grown.model, inputs, f"widened (seed {grown.plan.seed})")
    return 0


def deepen_command(args: argparse.Namespace) -> int:
    """``autogrow deepen``: insert identity blocks/layers, report, save.

    ```bash
    autogrow deepen wide/ --after layer2 -n 2 --out deeper/
    ```
    """
    from .transforms.deepen import deepen

    if _streamed(args):
        from .checkpoint.stream import deepen_checkpoint

        result = deepen_checkpoint(
            args.model,
            args.out,
            after=args.after,
            n=args.n,
            max_shard_size=args.max_shard_size,
            verify=not args.no_verify,
            overwrite=args.overwrite,
            trust=args.trust,
        )
        _report_streamed(args, result, "deepened")
        return 0
    model, inputs = _load_args(args)
    grown = deepen(
        model, after=args.after, n=args.n, example_inputs=inputs, verify=not args.no_verify
    )
    places = ", ".join(w or "<model>" for w, _ in grown.autogrow_recipe.steps[-1].args["after"])
    _report(args, model, grown, inputs, f"deepened after {places}")
    return 0


def _streamed(args: argparse.Namespace) -> bool:
    """Whether MODEL is a library's checkpoint directory (a Hugging Face ``config.json``
    beside safetensors weights), which is grown on disk without loading it."""
    from .adapters.directories import directory_format
    from .checkpoint.io import RECIPE

    path = Path(args.model)
    if not path.is_dir():
        return False
    if (path / RECIPE).exists():
        if not args.stream:
            return False  # loaded and grown in memory, as before
    elif directory_format(path) is None:
        return False
    unused = [
        flag
        for flag, value in (
            ("--num-classes", args.num_classes),
            ("--kwargs", args.kwargs),
            ("--input-shape", args.input_shape),
        )
        if value is not None
    ]
    if unused:
        raise InvalidArgumentError(
            f"{args.model} is a checkpoint directory, grown on disk: {', '.join(unused)} "
            "do not apply (sample inputs come from the model's embedding)"
        )
    if args.out is None:
        raise InvalidArgumentError(
            f"{args.model} is a checkpoint directory, grown on disk into another one: pass --out"
        )
    return True


def _report_streamed(args: argparse.Namespace, result: Any, what: str) -> None:
    before, after = result.parameters
    print(f"{args.model}: {what}, streamed from disk")
    if result.resumed_shards:
        print(
            f"resumed: {result.resumed_shards} weight file(s) kept from an interrupted run "
            "with the same arguments"
        )
    print(f"parameters: {before:,} -> {after:,} ({after / before:.2f}x)")
    changed = ", ".join(f"{k}={v}" for k, v in result.changes.items()) or "none"
    print(f"config changes: {changed}")
    if result.max_error is None:
        print("not verified (--no-verify)")
    else:
        print(f"max relative error of the outputs (sample inputs): {result.max_error:.2e}")
    print(
        f"saved to {result.path}/ ({result.shards} weight file(s), "
        f"{result.bytes_written / 1e6:,.1f} MB)"
    )


def stack_command(args: argparse.Namespace) -> int:
    """``autogrow stack``: copy the layer stacks' trained layers, report the change, save.

    ```bash
    autogrow stack models:ResidualMLP --factor 2 --order repeat --out stacked/
    ```
    """
    from .transforms.stack import stack_with_plan

    model, inputs = _load_args(args)
    grown = stack_with_plan(
        model,
        args.factor,
        order=args.order,
        stacks=args.stack,
        example_inputs=inputs,
        verify=not args.no_verify,
    )
    plan = grown.plan
    what = (
        f"stacked {', '.join(s or '<model>' for s in plan.stacks)} x{plan.factor} "
        f"({plan.order}): {plan.old_depth} -> {plan.new_depth} layers (not function-preserving)"
    )
    _report(args, model, grown.model, inputs, what)
    return 0


def _width_dict(items: list[str]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number: int | float = (
                int(value) if value.strip().lstrip("+").isdigit() else float(value)
            )
        except ValueError:
            number = float("nan")
        if not sep or not name or number != number:
            raise InvalidArgumentError(
                f"--width takes NAME=WIDTH (an int) or NAME=FACTOR (a float), got {item!r}"
            )
        out[name.strip()] = number
    return out


def _report(
    args: argparse.Namespace, model: nn.Module, grown: nn.Module, inputs: Any, what: str
) -> None:
    from .checkpoint.io import save
    from .checkpoint.recipe import recipe_of
    from .checkpoint.trust import allowed_factory
    from .verify import compare, run

    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in grown.parameters())
    print(f"{args.model}: {what}")
    print(f"parameters: {before:,} -> {after:,} ({after / before:.2f}x)")
    if inputs is None:
        from .tracing import prepare_inputs

        inputs = prepare_inputs(model, None)
    error = compare(run(grown, _fresh_like(inputs)), run(model, _fresh_like(inputs))).max_error
    print(f"max relative error of the outputs (eval mode, fresh inputs): {error:.2e}")
    if args.out is None:
        print("not saved (pass --out DIR to save)")
    else:
        path = save(grown, args.out, check=False)  # just grown by widen/deepen: it rebuilds
        load_args = repr(str(path))
        try:  # a factory of the user's own needs trust (or registering) to be loaded
            allowed_factory(recipe_of(grown).factory or "", recipe_of(grown).factory_kwargs)
        except AutogrowError:
            load_args += ", trust=True"
        print(f"saved to {path}/ (load with autogrow.load({load_args}))")


def _abbrev(names: list[str], limit: int = 4) -> str:
    more = f" (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _table(title: str, columns: list[str], rows: list[tuple[str, ...]], note: str) -> None:
    """A rich table when rich is installed, else aligned plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title, *aligned_table([tuple(columns), *rows]), note, sep="\n")
        return
    table = Table(title=title, caption=note, title_justify="left", caption_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*r)
    Console(soft_wrap=False).print(table)
