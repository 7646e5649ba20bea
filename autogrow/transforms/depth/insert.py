"""Putting the new modules into the model, and taking them out again (the undo).

New modules go into a Sequential/ModuleList at a placement's index (keeping its children's
names), or wrap a module as ``nn.Sequential(module, *new)``. Every container touched is saved
first, so the returned undo restores the model's module tree exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .placement import Placement
from .points import InsertionKind
from .recorder import parent_of


def insert_module(container: nn.Module, index: int, module: nn.Module) -> None:
    """Insert ``module`` at ``index`` of a Sequential or ModuleList, keeping named children.

    ``Sequential.insert`` renumbers children as ``"0", "1", ...`` and fails on a Sequential built
    from an OrderedDict; there new layers are named ``grown0``, ``grown1``, ... (first unused).
    """
    names = list(container._modules)
    if names == [str(i) for i in range(len(names))]:
        container.insert(index, module)  # type: ignore[operator]
        return
    k = 0
    while f"grown{k}" in container._modules:
        k += 1
    name = f"grown{k}"
    items = list(container._modules.items())
    items.insert(index, (name, module))
    container._modules.clear()
    container._modules.update(items)


def insert_all(result: nn.Module, placements: list[Placement], n: int) -> Callable[[], None]:
    """Insert every placement's modules (``n`` times) into ``result``; returns an undo."""
    saved: dict[int, tuple[nn.Module, dict]] = {}

    def save(m: nn.Module) -> None:
        saved.setdefault(id(m), (m, dict(m._modules)))

    # Build on the result's modules first (blocks copy the result's own block), then insert
    # deepest names first and, in one container, from the highest index down.
    built = []
    for plan in placements:
        factory = plan.factory
        if plan.point.kind == InsertionKind.BLOCK:
            factory = factory(result)
        built.append((plan, [m for _ in range(n) for m in factory()]))
    built.sort(key=lambda pb: (pb[0].container.count("."), pb[0].index or 0), reverse=True)
    for plan, modules in built:
        if plan.index is None:
            parent, attr = parent_of(result, plan.container)
            save(parent)
            old = parent._modules[attr]
            for m in modules:  # new layers follow the mode of the module they follow
                m.train(old.training)
            wrapper = nn.Sequential(old, *modules)
            wrapper.training = old.training
            parent._modules[attr] = wrapper
        else:
            container = result.get_submodule(plan.container)
            save(container)
            before = list(container._modules.values())[: plan.index]
            training = before[-1].training if before else container.training
            for offset, m in enumerate(modules):
                if plan.point.kind != InsertionKind.BLOCK:  # copied blocks keep their own flags
                    m.train(training)
                insert_module(container, plan.index + offset, m)

    def undo() -> None:
        for m, modules in saved.values():
            m._modules.clear()
            m._modules.update(modules)

    return undo
