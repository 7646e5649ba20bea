"""Small text helpers shared by every layer: plain aligned tables and qualified names."""

from __future__ import annotations

from collections.abc import Sequence


def aligned_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as aligned lines, a rule of dashes under the first (header) row.

    >>> print("\\n".join(aligned_table([("name", "width"), ("fc1", "8")])))
    name  width
    ----  -----
    fc1   8
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def owner_module(qualname: str) -> str:
    """The qualified name of the module that owns a parameter, buffer or attribute.

    >>> owner_module("layer1.0.conv1.weight"), owner_module("bias")
    ('layer1.0.conv1', '')
    """
    return qualname.rpartition(".")[0]
