"""A griffe extension for the API reference: doctest examples become code blocks.

autogrow's docstrings put ``>>>`` examples right in the text (doctest runs them, see
tests/test_docstrings.py). The Google-style parser only treats them as code inside an
``Examples:`` section; elsewhere Markdown would render ``>>>`` as nested quotes. This
extension wraps each run of doctest lines (up to the next blank line) in a ``pycon`` fence
before the docstring is parsed.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    r"""Wrap every doctest block (``>>>`` up to a blank line) outside fences in a pycon fence.

    >>> fence_doctests("Words.\n\n>>> 1 + 1\n2").splitlines()
    ['Words.', '', '```pycon', '>>> 1 + 1', '2', '```']
    """
    out: list[str] = []
    in_fence = in_doctest = False
    for line in text.split("\n"):
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append("```")
            in_doctest = False
        elif not in_doctest and stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_doctest and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the doctest blocks of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
