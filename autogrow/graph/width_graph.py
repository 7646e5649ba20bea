"""The width graph: the inferred width groups of a model, as data you can print and export."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import networkx as nx

from .._text import aligned_table, owner_module
from ..axes.relations import SizeRelations
from ..axes.store import AxisStore
from ..axes.terms import Atom, Term
from ..errors import GroupNotFoundError
from ..rules.context import COPY, REDUCE, TAPS, Analysis
from .fill import fill_groups


@dataclass
class Member:
    """One parameter axis in a group: ``layout`` is its axis term, e.g. ``(32 a7)``.

    ``role`` is ``"copy"`` (the axis indexes the group's units: rows of the producing layer,
    norm parameters) or ``"reduce"`` (summed over by the consuming layer: its outgoing weights).

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> [(m.param, m.dim, m.role) for m in autogrow.analyze(net).group("0").members]
    [('0.weight', 0, 'copy'), ('0.bias', 0, 'copy'), ('2.weight', 1, 'reduce')]
    """

    param: str
    dim: int
    role: str
    layout: str


@dataclass
class WidthGroup:
    """A set of axes that carry the same units and therefore share one mapping.

    Attributes:
        name: the module that produces the group's units (``:1``, ``:2``, ... for further
            groups of that module; ``:in`` for a group no module produces, such as a model
            input). Usable as a key of ``widen``'s ``factor`` dict.
        id: the atom id; layouts print the group as ``a<id>``.
        width: the number of units.
        frozen: why the group cannot change width (model input or output, an op without a
            rule, ...), or ``None``.
        uniform: why every unit must be replicated equally often (a norm or mean averages
            over it), or ``None``.
        fill: for a uniform group that can also grow by any amount, what its *filled* units
            hold: ``"mean"`` (of the old units; under LayerNorm) or ``"zero"`` (under
            RMSNorm); ``None`` otherwise (docs/widen.md, "Non-integer widths under LayerNorm
            and RMSNorm").
        members: the parameter axes in the group (:class:`Member`).
        modules: qualified names of the modules owning the members.

    >>> import torch, autogrow
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> g = autogrow.analyze(net).group("0")
    >>> g.name, g.width, g.widenable, g.modules
    ('0', 8, True, ['0', '1', '2'])
    """

    name: str
    id: int
    width: int
    frozen: str | None
    uniform: str | None
    members: list[Member] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    fill: str | None = None

    @property
    def widenable(self) -> bool:
        """``True`` unless the group is frozen.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> [(g.name, g.widenable) for g in autogrow.analyze(net).groups]
        [('0:in', False), ('0', True), ('2', False)]
        """
        return self.frozen is None

    @property
    def whole_multiples_only(self) -> bool:
        """``True`` when the group grows by whole multiples of its width only: uniform (a norm
        or mean averages over it) and no filled units fit it (``fill`` is ``None``).

        >>> import torch, autogrow
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> autogrow.analyze(net).group("0").whole_multiples_only
        False
        """
        return bool(self.uniform) and not self.fill

    def constraints(self) -> list[str]:
        """``"uniform"`` if set, and ``"layout ..."`` for layouts other than the plain atom.

        >>> import torch, autogrow
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> autogrow.analyze(net).group("0").constraints()
        ['uniform, fill mean']
        """
        out = []
        if self.uniform:
            out.append(f"uniform, fill {self.fill}" if self.fill else "uniform")
        blocks = {m.layout for m in self.members if m.layout != f"a{self.id}"}
        if blocks:
            out.append("layout " + ", ".join(sorted(blocks))[:60])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The group as plain data (members as dicts), for JSON.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> sorted(autogrow.analyze(net).group("0").to_dict())
        ['fill', 'frozen', 'members', 'modules', 'name', 'uniform', 'width']
        """
        return {
            "name": self.name,
            "width": self.width,
            "frozen": self.frozen,
            "uniform": self.uniform,
            "fill": self.fill,
            "modules": self.modules,
            "members": [vars(m) for m in self.members],
        }


def tied_factor(members: Sequence[WidthGroup], factor: float) -> Fraction:
    """The common factor, at most ``factor``, by which ratio-tied ``members`` grow to whole
    widths: a whole number when one of them grows by whole multiples only, else a multiple
    of ``1 / gcd(widths)`` (so every member's new width is whole).

    >>> filled = WidthGroup("hidden", 0, 64, None, "a norm", fill="zero")
    >>> whole = WidthGroup("hidden", 0, 64, None, "a norm")
    >>> heads = WidthGroup("heads", 1, 2, None, None)
    >>> tied_factor([filled, heads], 1.5), tied_factor([whole, heads], 1.5)
    (Fraction(3, 2), Fraction(1, 1))
    """
    if any(g.whole_multiples_only for g in members):
        return Fraction(math.floor(factor + 1e-9))
    step = math.gcd(*(g.width for g in members))
    return Fraction(math.floor(factor * step + 1e-9), step)


class WidthGraph:
    """The result of :func:`autogrow.analyze`: width groups, blocked ops, and the axis graph.

    >>> import torch, autogrow
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> graph = autogrow.analyze(model)
    >>> [(g.name, g.width, g.widenable) for g in graph.groups if g.widenable]
    [('0', 8, True)]
    """

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.groups: list[WidthGroup] = _collect_groups(analysis)
        self._by_name = {g.name: g for g in self.groups}
        self._by_id = {g.id: g for g in self.groups}
        # Uniform groups normalised alone that filled units can grow by any amount. A group
        # ratio-tied to another uniform group is normalised together with it (parts of one
        # concatenation): one norm over both would need one ρ, so it is left out. A tie to
        # groups no norm reads (heads whose size a config derives) allows filling: the tied
        # class then grows by one common, possibly fractional, factor (tied_factor).
        store = analysis.store
        uniform_ids = {g.id for g in self.groups if g.uniform}
        tied: set[int] = set()
        for a, b in store.ratio_ties.edges:
            ids = {x.id for t in (a, b) for x in store.leaf_atoms(store.atom(t))}
            if len(ids & uniform_ids) > 1:
                tied |= ids
        candidates = {g.id for g in self.groups if g.uniform and g.widenable and g.id not in tied}
        self.fills, self.unfilled = fill_groups(analysis, candidates)
        for gid, f in self.fills.items():
            self._by_id[gid].fill = f.kind
        self.blocked: list[str] = [
            f"{b.call.where(full=True)}: {b.reason}" for b in analysis.blocked
        ]
        # What the model's library can describe (a config's fields as relations on the
        # groups), when widen asked its adapter; the planner then plans under them.
        self.relations: SizeRelations | None = None
        self.kept: dict[int, str] = {}  # groups keep_width froze for a widening, and why

    def drop_fill(self, gid: int, why: str) -> None:
        """Group ``gid`` grows by whole multiples only after all (``why`` filled units do not
        fit it, e.g. its norm's eps cannot be saved), as if the fill walk had refused it.

        >>> import torch, autogrow
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> g = graph.group("0")
        >>> g.whole_multiples_only, graph.drop_fill(g.id, "eps fixed"), g.whole_multiples_only
        (False, None, True)
        """
        self.fills.pop(gid, None)
        self.unfilled[gid] = why
        if (g := self._by_id.get(gid)) is not None:
            g.fill = None

    def keep_width(self, gid: int, why: str) -> None:
        """Group ``gid`` keeps its width from now on (frozen: ``why``), e.g. forward code sizes
        it with a literal whose attributes cannot follow a widening.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> graph.keep_width(graph.group("0").id, "kept"), graph.group("0").frozen
        (None, 'kept')
        """
        if (g := self._by_id.get(gid)) is not None:
            g.frozen = why
            self.kept[gid] = why

    # -- lookups ---------------------------------------------------------------------------
    @property
    def store(self) -> AxisStore:
        """The analysis' ``AxisStore`` (axis terms, their union-find and ties).

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> type(graph.store).__name__
        'AxisStore'
        """
        return self.analysis.store

    def group(self, key: str) -> WidthGroup | None:
        """The group named ``key``, or the group of the output units of module ``key``.

        Returns ``None`` if ``key`` is neither.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
        ...                           torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
        >>> graph = autogrow.analyze(net, (torch.randn(1, 3, 16, 16),))
        >>> graph.group("1").name, graph.group("1").width  # the BatchNorm names its conv's group
        ('0', 8)
        >>> graph.group("nope") is None
        True
        """
        named = self._by_name.get(key)
        candidates = self.module_groups(key)
        if candidates and candidates[0].widenable and (named is None or not named.widenable):
            return candidates[0]  # a module name: its widenable output group
        return named or (candidates[0] if candidates else None)

    def module_groups(self, module: str) -> list[WidthGroup]:
        """Groups of a module's output units (its parameters' copy axes), widenable first.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> [g.name for g in graph.module_groups("2")]
        ['2']
        """
        found: dict[int, WidthGroup] = {}
        for info in self.analysis.params.values():
            if owner_module(info.name) != module and not (module == "" and "." not in info.name):
                continue
            for d, t in enumerate(info.terms):
                if COPY in info.roles[d]:
                    for a in self.store.leaf_atoms(t):
                        if a.id in self._by_id:
                            found.setdefault(a.id, self._by_id[a.id])
        return sorted(found.values(), key=lambda g: (not g.widenable, g.id))

    def by_id(self, atom_id: int) -> WidthGroup | None:
        """The group whose ``id`` is ``atom_id`` (the ``7`` of ``a7`` in a layout), or ``None``.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> g = graph.group("0")
        >>> graph.by_id(g.id) is g
        True
        """
        return self._by_id.get(atom_id)

    def max_factor(self, key: str | WidthGroup, factor: float) -> float:
        """The largest factor, up to ``factor``, that a group takes when the model is widened
        by the float ``factor``, as its own constraints and its ratio ties decide.

        * ``1.0`` for a frozen group;
        * a whole number, ``floor(factor)``, for a *uniform* group (a LayerNorm/GroupNorm or a
          mean averages over it, so every unit is replicated equally often), unless it can
          take filled units (``group.fill``: mean or zero units make up the rest);
        * for groups in a ratio tie (normalised together, or a head count the config ties to
          the hidden size): one common factor (:func:`tied_factor`: whole if one of them grows
          by whole multiples only, else a multiple of ``1 / gcd(widths)``), ``1.0`` if one of
          them is frozen;
        * else ``round(width × factor) / width``.

        Planning can keep a group further, where forward code keeps its size equal to another
        axis (a channel shuffle, a view sized from another tensor); ``widen`` lists every group
        it kept or grew less in one :class:`~autogrow.GrowthWarning`.

        >>> import torch, autogrow
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Linear(8, 16), nn.ReLU(),
        ...                     nn.Linear(16, 2))
        >>> graph = autogrow.analyze(net)
        >>> graph.max_factor("0", 1.5), graph.max_factor("0", 2.5)  # GroupNorm'd: whole multiples
        (1.0, 2.0)
        >>> graph.max_factor("2", 1.5), graph.max_factor("4", 1.5)  # plain; the output: frozen
        (1.5, 1.0)
        """
        group = key if isinstance(key, WidthGroup) else self.group(key)
        if group is None:
            raise GroupNotFoundError(
                f"{key!r} names no width group and no module with parameters in one"
            )
        return self._whole_or_own(group, float(factor), tied=True)

    def admissible_factors(self, factor: float) -> dict[str, float]:
        """:meth:`max_factor` of every widenable group, by group name.

        >>> import torch, autogrow
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8), nn.Linear(8, 16), nn.ReLU(),
        ...                     nn.Linear(16, 2))
        >>> autogrow.analyze(net).admissible_factors(1.5)
        {'0': 1.0, '2': 1.5}
        """
        return {g.name: self.max_factor(g, factor) for g in self.groups if g.widenable}

    def ratio_tied(self, group: WidthGroup) -> list[WidthGroup]:
        """The other groups that must grow by the same factor as ``group`` (a ratio
        tie: parts normalised together, or heads whose size the config derives).

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> graph.ratio_tied(graph.group("0"))
        []
        """
        store = self.store
        linked = nx.Graph()
        for a, b in store.ratio_ties.edges:
            for x in store.leaf_atoms(store.atom(a)):
                for y in store.leaf_atoms(store.atom(b)):
                    linked.add_edge(x.id, y.id)
        if group.id not in linked:
            return []
        cls = nx.node_connected_component(linked, group.id) - {group.id}
        return [g for i in sorted(cls) if (g := self.by_id(i)) is not None]

    def _whole_or_own(self, group: WidthGroup, factor: float, *, tied: bool) -> float:
        if not group.widenable:
            return 1.0
        if group.whole_multiples_only:
            own = float(math.floor(factor + 1e-9))
        else:
            own = max(group.width, round(group.width * factor)) / group.width
        if not tied:
            return own
        others = self.ratio_tied(group)
        if not others:
            return own
        if any(not g.widenable for g in others):
            return 1.0
        return float(tied_factor([group, *others], factor))

    @property
    def nx(self) -> nx.Graph:
        """Groups and parameter axes as a networkx graph.

        One node per group (``kind="group"``, ``width``, ``frozen``) and one per parameter axis
        (``"param:dim"``; ``kind="param_axis"``, ``role``), an edge (``layout``) from each group
        to each axis it appears in.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> sorted(graph.nx.neighbors("0"))
        ['0.bias:0', '0.weight:0', '2.weight:1']
        """
        g = nx.Graph()
        for grp in self.groups:
            g.add_node(grp.name, kind="group", width=grp.width, frozen=grp.frozen is not None)
            for m in grp.members:
                node = f"{m.param}:{m.dim}"
                g.add_node(node, kind="param_axis", role=m.role)
                g.add_edge(grp.name, node, layout=m.layout)
        return g

    # -- output ----------------------------------------------------------------------------
    def table(self, *, all_groups: bool = False) -> str:
        """A readable table of the groups (frozen ones summarised unless ``all_groups``).

        ``str(graph)`` is ``graph.table()``.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> print(graph.table())
        group  width  status     constraints  modules
        -----  -----  ---------  -----------  -------
        0      8      widenable               0, 2
        1 widenable groups, 2 frozen, 0 ops without a rule
        """
        rows = [("group", "width", "status", "constraints", "modules")]
        shown = [g for g in self.groups if all_groups or g.widenable]
        for g in shown:
            status = "widenable" if g.widenable else f"frozen: {g.frozen}"[:50]
            mods = ", ".join(g.modules[:4]) + (
                f" (+{len(g.modules) - 4})" if len(g.modules) > 4 else ""
            )
            rows.append((g.name, str(g.width), status, "; ".join(g.constraints())[:50], mods))
        lines = aligned_table(rows)
        frozen = sum(1 for g in self.groups if not g.widenable)
        lines.append(
            f"{sum(1 for g in self.groups if g.widenable)} widenable groups, {frozen} frozen, "
            f"{len(self.blocked)} ops without a rule"
        )
        for b in self.blocked[:10]:
            lines.append(f"  blocked: {b}")
        if len(self.blocked) > 10:
            lines.append(f"  ... and {len(self.blocked) - 10} more blocked ops")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"WidthGraph({len(self.groups)} groups, {len(self.blocked)} blocked ops)"

    def to_dict(self) -> dict[str, Any]:
        """``{"groups": [group.to_dict(), ...], "blocked": [...]}``.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> [g["name"] for g in graph.to_dict()["groups"]]
        ['0:in', '0', '2']
        """
        return {"groups": [g.to_dict() for g in self.groups], "blocked": self.blocked}

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(graph.to_dict(), **kwargs)``.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> graph.to_json()[:40]
        '{"groups": [{"name": "0:in", "width": 4,'
        """
        return json.dumps(self.to_dict(), **kwargs)

    def to_dot(self) -> str:
        """Graphviz DOT: one box per group, one ellipse per parameter axis.

        >>> import torch, autogrow
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> graph = autogrow.analyze(net)
        >>> graph.to_dot().splitlines()[0]
        'graph width_groups {'
        """
        lines = ["graph width_groups {", "  rankdir=LR;", "  node [fontsize=10];"]
        for g in self.groups:
            color = "lightblue" if g.widenable else "lightgrey"
            label = f"{g.name}\\nwidth {g.width}"
            lines.append(
                f'  "{g.name}" [shape=box, style=filled, fillcolor={color}, label="{label}"];'
            )
            for m in g.members:
                node = f"{m.param}:{m.dim}"
                lines.append(f'  "{node}" [shape=ellipse, label="{m.param}[{m.dim}]\\n{m.role}"];')
                lines.append(f'  "{g.name}" -- "{node}" [label="{m.layout}"];')
        lines.append("}")
        return "\n".join(lines)


def _collect_groups(analysis: Analysis) -> list[WidthGroup]:
    store = analysis.store
    groups: dict[int, WidthGroup] = {}
    owners: dict[int, list[str]] = {}
    for info in analysis.params.values():
        module = owner_module(info.name)
        for d, t in enumerate(info.terms):
            roles = info.roles[d]
            if TAPS in roles:  # kernel taps and the like: not a unit axis, not a group
                continue
            resolved: Term = store.resolve(t)
            role = REDUCE if REDUCE in roles else COPY
            for a in store.leaf_atoms(t):
                ai = store.info(a)
                g = groups.get(a.id)
                if g is None:
                    g = groups[a.id] = WidthGroup("", a.id, a.size, ai.frozen, ai.uniform)
                g.members.append(Member(info.name, d, role, repr(resolved)))
                if module not in g.modules:
                    g.modules.append(module)
                if COPY in roles:
                    owners.setdefault(a.id, [])
                    if module not in owners[a.id]:
                        owners[a.id].append(module)
    order = {m: i for i, m in enumerate(analysis.module_order)}

    def key(g: WidthGroup) -> tuple:
        produced = owners.get(g.id)
        first = min((order.get(m, 1 << 30) for m in (produced or g.modules)), default=0)
        return (produced is None, first, g.frozen is not None, g.id)

    ordered = sorted(groups.values(), key=key)
    used: dict[str, int] = {}
    for g in ordered:
        produced = owners.get(g.id)
        # Named after the module producing the units; a group only consumed (a model input,
        # say) is named after its first consumer with ":in".
        base = (produced[0] or "<root>") if produced else f"{g.modules[0] or '<root>'}:in"
        n = used.get(base, 0)
        used[base] = n + 1
        g.name = base if n == 0 else f"{base}:{n}"
    return sorted(ordered, key=lambda g: (key(g)[1], g.id))


def leaf_atom_ids(store: AxisStore, t: Term) -> list[int]:
    return [a.id for a in store.leaf_atoms(t)]


__all__ = ["Member", "WidthGroup", "WidthGraph", "Atom"]
