"""Every public name has a docstring with an example, and the package's doctests pass."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import autogrow

# Modules whose import runs a program (the CLI entry point, the demo).
NOT_IMPORTED = {"autogrow.__main__", "autogrow.demo"}


def _own_doc(obj: object) -> str:
    """The object's own docstring (a class's, not an inherited one; an instance's class's)."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, property)):
        obj = type(obj)  # e.g. default_registry: documented by its class
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__") or ""
    if isinstance(obj, property):
        obj = obj.fget
    return getattr(obj, "__doc__", None) or ""


def _has_example(doc: str) -> bool:
    return ">>>" in doc or "```" in doc


def _public_methods(cls: type) -> list[str]:
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))
    ]


PUBLIC = [(name, getattr(autogrow, name)) for name in autogrow.__all__]
METHODS = [
    (f"{cls.__name__}.{name}", vars(cls)[name])
    for cls in (autogrow.WidthGraph, autogrow.WidthGroup)
    for name in _public_methods(cls)
]


@pytest.mark.parametrize(("name", "obj"), PUBLIC + METHODS, ids=[n for n, _ in PUBLIC + METHODS])
def test_public_name_has_a_docstring_with_an_example(name: str, obj: object) -> None:
    doc = _own_doc(obj)
    assert doc.strip(), f"autogrow.{name} has no docstring"
    assert _has_example(doc), f"autogrow.{name}'s docstring has no example (>>> or a code block)"


def test_the_checks_see_missing_docstrings_and_examples() -> None:
    class Bare:
        def method(self) -> None:
            pass

    class Described:
        """Has words but no example."""

    assert _own_doc(Bare) == "" and _own_doc(Bare.method) == ""
    assert not _has_example(_own_doc(Described))
    assert _public_methods(Bare) == ["method"]


def _package_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(autogrow.__path__, "autogrow.")
        if info.name not in NOT_IMPORTED
    )


@pytest.mark.parametrize("module_name", _package_modules())
def test_doctests_pass(module_name: str) -> None:
    module = importlib.import_module(module_name)  # the dev extra installs every optional dep
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module, module_name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {module_name}"


def test_api_page_extension_fences_doctest_blocks() -> None:
    """docs/hooks/doctest_blocks.py turns bare ``>>>`` runs into code blocks for mkdocstrings."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "hooks" / "doctest_blocks.py"
    spec = importlib.util.spec_from_file_location("doctest_blocks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Words.\n\n>>> 1 + 1\n2\n\nMore.\n\n```python\n>>> inside a fence\n```"
    assert module.fence_doctests(text).split("\n") == [
        "Words.", "", "```pycon", ">>> 1 + 1", "2", "```", "", "More.", "",
        "```python", ">>> inside a fence", "```",
    ]  # fmt: skip
