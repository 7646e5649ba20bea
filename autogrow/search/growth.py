"""Growth sites, plan sampling and applying a plan with ``autogrow.widen``/``deepen``/``stack``.

A *site* is a place in the **seed** model where growth may happen: a widenable width group
(named by a module in it) or an insertion point. Sites are named after the seed, so Optuna's
parameter names and choices stay the same whatever parent a trial grows. Deepening renames
modules (a ``Sequential`` renumbers its children), so each site's module carries a plain
attribute with the site's name; copies made by growth keep it, and the site resolves to the
first module that has it. A checkpoint records the site → module-name map (user attribute
``sites``) so that a loaded model can be tagged again. Each operation of a sampled plan also
records what its site is in the seed (``module``, e.g. ``"Linear(64→16)"``) and, for deepen,
whether it appends a block to a stage or inserts a layer after a module (``kind``), so that the
report can say what ``widen 1 ×1.5`` means. Paired widening is a widen operation with
``symmetry: "paired"``; stacking has no site (it stacks every layer stack of the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import FrozenGroupError, GroupNotFoundError
from ..transforms.layer_kinds import is_activation
from .space import Growth

SITE_ATTR = "_autogrow_site"


@dataclass(frozen=True)
class Sites:
    """The seed's growth sites: width groups that may widen, places where depth may go.

    ``modules``: site → a short description of its module in the seed (:func:`module_label`);
    ``blocks``: the deepen sites that are stages, where deepen appends a copy of the last block
    (``modules`` describes that block); at the other deepen sites it inserts an identity layer
    after the module. ``stack``: the seed has layer stacks that ``autogrow.stack`` can copy.

    >>> Sites(("1", "3"), ("2",)).widen
    ('1', '3')
    """

    widen: tuple[str, ...]
    deepen: tuple[str, ...]
    modules: Mapping[str, str] = field(default_factory=dict, compare=False)
    blocks: frozenset[str] = frozenset()
    stack: bool = False

    def offers(self, kind: str) -> bool:
        """Whether operator ``kind`` (``Growth.kinds``) has somewhere to apply.

        >>> Sites(("1",), ()).offers("widen-paired"), Sites(("1",), ()).offers("stack")
        (True, False)
        """
        if kind == "stack":
            return self.stack
        return bool(self.widen if kind.startswith("widen") else self.deepen)


def seed_sites(model: nn.Module, growth: Growth, inputs: tuple) -> Sites:
    """Resolve ``growth.widen``/``growth.deepen`` on the seed (defaults: see :class:`Growth`)."""
    import autogrow

    graph = autogrow.analyze(model, inputs)
    widenable = [g for g in graph.groups if g.widenable]
    if growth.widen is None:
        widen = tuple(g.name for g in widenable)
    else:
        by_module = {m: g for g in graph.groups for m in g.modules}
        names = {g.name: g for g in graph.groups}
        for name in growth.widen:
            group = names.get(name) or by_module.get(name)
            if group is None:
                raise GroupNotFoundError(
                    f"Growth.widen names {name!r}, which is neither a width group nor a module "
                    f"of the seed; widenable groups: {[g.name for g in widenable]}"
                )
            if not group.widenable:
                raise FrozenGroupError(
                    f"Growth.widen names {name!r}, whose group {group.name!r} is frozen "
                    f"({group.frozen}); widenable groups: {[g.name for g in widenable]}"
                )
        widen = tuple(growth.widen)
    if growth.deepen is None:
        points = autogrow.insertion_points(model, inputs)
        blocks = [p.where for p in points if p.kind == "block"]
        if blocks:
            deepen = tuple(blocks)
        else:
            deepen = tuple(p.where for p in points if is_activation(model.get_submodule(p.where)))
        stages = frozenset(blocks)
    else:
        for name in growth.deepen:
            model.get_submodule(name)  # raises AttributeError naming the module if absent
        deepen = tuple(growth.deepen)
        # (no tracing for this: insertion_points takes seconds on a ResNet-18)
        stages = frozenset(n for n in deepen if _is_stage(model.get_submodule(n)))
    widen = widen if "widen" in growth.kinds else ()
    stages &= set(deepen)
    modules = {}
    for site in dict.fromkeys((*widen, *deepen)):
        name = site
        if site in widen and not _has_submodule(model, site):  # a group name: its first module
            name = next(g.modules[0] for g in graph.groups if g.name == site)
        m = model.get_submodule(name)
        if site in stages and list(m.children()):  # what deepen appends: a copy of the last
            m = list(m.children())[-1]
        modules[site] = module_label(m)
    stack = False
    if growth.stack:
        from ..transforms.depth.recorder import Recording
        from ..transforms.stack import find_runs

        find_runs(model, Recording(model, inputs), None)  # raises if the seed has none
        stack = True
    return Sites(widen, deepen, modules, stages, stack)


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def module_label(m: nn.Module) -> str:
    """A short description of one module: a leaf with its sizes, a container by its class.

    >>> module_label(nn.Linear(64, 16)), module_label(nn.Sequential(nn.ReLU()))
    ('Linear(64→16)', 'Sequential')
    """
    from .training import describe

    return type(m).__name__ if list(m.children()) else describe(m)


def _is_stage(m: nn.Module) -> bool:
    return isinstance(m, (nn.Sequential, nn.ModuleList))


def tag(model: nn.Module, site_map: Mapping[str, str]) -> nn.Module:
    """Mark each site's current module (``site_map``: site → qualified name); returns model."""
    for site, name in site_map.items():
        setattr(model.get_submodule(name), SITE_ATTR, site)
    return model


def site_map(model: nn.Module) -> dict[str, str]:
    """site → qualified name of the first module carrying that site's mark.

    >>> net = tag(nn.Sequential(nn.Linear(2, 2)), {"fc": "0"})
    >>> site_map(net)
    {'fc': '0'}
    """
    found: dict[str, str] = {}
    for name, m in model.named_modules():
        site = getattr(m, SITE_ATTR, None)
        if site is not None and site not in found:
            found[site] = name
    return found


def sample_plan(trial: Any, growth: Growth, sites: Sites) -> list[dict[str, Any]]:
    """Draw a growth plan with define-by-run ``suggest_*`` calls; names depend only on the seed.

    Parameters: ``n_ops``; per operation ``i``: ``op{i}`` (one of ``growth.kinds``), then
    ``op{i}_widen`` (a width site) with ``op{i}_factor`` for widen and widen-paired,
    ``op{i}_deepen`` (an insertion site), or ``op{i}_stack`` (a stacking factor). Each
    operation is a dict: ``op``, ``site``, ``factor`` (widen, stack), ``symmetry``
    (``"paired"`` for widen-paired), ``kind`` (deepen: ``"block"`` or ``"layer"``; stack:
    ``"stack"``), and ``module`` (the site's module in the seed, when known).
    """
    kinds = [k for k in growth.kinds if sites.offers(k)]
    n = trial.suggest_int("n_ops", growth.min_ops, growth.max_ops)
    plan: list[dict[str, Any]] = []
    for i in range(n):
        kind = trial.suggest_categorical(f"op{i}", kinds)
        if kind == "stack":
            factor = trial.suggest_categorical(f"op{i}_stack", [int(f) for f in growth.stack])
            plan.append({"op": "stack", "site": None, "factor": factor, "kind": "stack"})
            continue
        if kind.startswith("widen"):
            site = trial.suggest_categorical(f"op{i}_widen", list(sites.widen))
            factor = trial.suggest_categorical(f"op{i}_factor", [float(f) for f in growth.factors])
            plan.append({"op": "widen", "site": site, "factor": factor})
            if kind == "widen-paired":
                plan[-1]["symmetry"] = "paired"
        else:
            site = trial.suggest_categorical(f"op{i}_deepen", list(sites.deepen))
            kind = "block" if site in sites.blocks else "layer"
            plan.append({"op": "deepen", "site": site, "kind": kind})
        if site in sites.modules:
            plan[-1]["module"] = sites.modules[site]
    return plan


def apply_plan(
    model: nn.Module, plan: Sequence[Mapping[str, Any]], inputs: tuple, seed: int
) -> nn.Module:
    """Grow ``model`` (tagged with its sites) by each operation in turn; verified, not in place.

    Raises the :class:`autogrow.AutogrowError` of a refused operation, naming the operation.
    """
    import autogrow

    for i, op in enumerate(plan):
        if op["op"] == "stack":
            try:
                model = autogrow.stack(model, int(op["factor"]), example_inputs=inputs)
            except autogrow.AutogrowError as e:
                e.args = (f"growth operation {i} (stack ×{op['factor']}): {e}",)
                raise
            continue
        where = site_map(model).get(op["site"])
        if where is None:
            raise GroupNotFoundError(
                f"growth operation {i} ({op}): no module carries site {op['site']!r}; the "
                "parent checkpoint's site map is incomplete"
            )
        try:
            if op["op"] == "widen":
                model = autogrow.widen(
                    model,
                    {where: float(op["factor"])},
                    example_inputs=inputs,
                    seed=seed + i,
                    symmetry=op.get("symmetry", "split"),
                )
            else:
                model = autogrow.deepen(model, after=where, example_inputs=inputs)
        except autogrow.AutogrowError as e:
            e.args = (f"growth operation {i} ({op['op']} {op['site']!r} at {where!r}): {e}",)
            raise
    return model
