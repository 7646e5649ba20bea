"""The public entry points of deepening: :func:`insertion_points`, :func:`deepen` and
:func:`deepen_with_plan`, and the :class:`DeepenTransform` parts that the shared grow skeleton
(:func:`autogrow.transforms.skeleton.grow`) runs.
"""

from __future__ import annotations

import copy
from typing import Any, overload

import torch
from torch import nn

from ...adapters import adapter_for
from ...rules import get_default_registry
from ...tracing import prepare_inputs
from ...verify import verify as verify_outputs
from ..optimizer import extend_optimizer
from ..skeleton import Grown, Transform, Undo, grow
from ..structure import check_deepened, fx_graph_or_none
from .branches import block_candidate, block_point
from .insert import insert_all
from .placement import After, DeepenPlan, Placement, check_n, normalise_after, placements
from .points import InsertionKind, InsertionPoint
from .recorder import Recording
from .stacks import identity_point


def insertion_points(
    model: nn.Module, example_inputs: tuple[Any, ...] | None = None
) -> list[InsertionPoint]:
    """Every place where :func:`deepen` can add depth, and what it would insert there.

    Residual blocks (children of a Sequential/ModuleList that become the identity when their
    branch's last Linear/Conv is zeroed) give ``"block"`` points, named after their stage when
    they are its last block; every Linear, Conv, norm and activation module that runs once (or
    always with the same width) gives an ``"identity"`` point. The model runs once, in eval mode.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> for p in autogrow.insertion_points(net):
    ...     print(p)
    0  [identity]  Linear(8, 8)=I, PReLU(8, init=1)  (exact in train mode too)
    1  [identity]  Linear(8, 8)=I, ReLU  (exact in train mode too)
    2  [identity]  Linear(2, 2)=I, PReLU(2, init=1)  (exact in train mode too)
    """
    inputs = prepare_inputs(model, example_inputs)
    rec = Recording(model, inputs)
    points: list[InsertionPoint] = []
    for name, m in model.named_modules():
        if name and block_candidate(model, name, rec):
            p = block_point(model, name, rec)
            if p is not None:
                points.append(p)
        elif name and name in rec.order and not isinstance(m, (nn.Dropout, nn.Identity)):
            p = identity_point(model, name, rec)
            if p is not None:
                points.append(p)
    return points


class DeepenTransform(Transform[DeepenPlan]):
    """deepen's parts for :func:`~autogrow.transforms.skeleton.grow`: record a forward, resolve
    ``after`` into placements, insert zeroed blocks or identity stacks, extend the optimizer.

    >>> DeepenTransform("fc1", 2).op
    'deepen'
    """

    op = "deepen"
    what = "deepened"

    def __init__(self, after: After, n: int) -> None:
        check_n(n)
        self.targets = normalise_after(after)
        self.n = n

    def plan(self, model: nn.Module, inputs: tuple, *, verify: bool) -> tuple[DeepenPlan, Any]:
        rec = Recording(model, inputs)
        self.placements: list[Placement] = placements(model, rec, self.targets)
        # The resolved places (not ``after``): the default placement looks at the model's values.
        places = tuple((p.point.where, InsertionKind(p.point.kind)) for p in self.placements)
        self.deepen_plan = DeepenPlan(places, self.n)
        self.reference = rec.output
        return self.deepen_plan, rec.output

    def prepare_adapter(self, model: nn.Module):
        adapter = adapter_for(model)
        stacks = adapter.layer_stacks(model)
        blocks = [p for p in self.placements if p.point.kind == InsertionKind.BLOCK]
        inserted = [(p.container, p.index, self.n) for p in blocks]
        return lambda result: adapter.after_deepen(result, stacks, inserted)

    def apply(self, model: nn.Module, *, inplace: bool) -> tuple[nn.Module, Undo]:
        self.old_params = list(model.parameters())  # before an in-place change adds layers
        self.memo: dict[int, Any] = {}
        self.leaf_types = get_default_registry().leaf_types()
        self.old_graph: Any = False  # not traced yet
        if inplace:  # the structure check needs the graph from before the insertion
            self.old_graph = fx_graph_or_none(model, self.leaf_types)
        result = model if inplace else copy.deepcopy(model, self.memo)
        return result, insert_all(result, self.placements, self.n)

    def check_structure(self, model: nn.Module, result: nn.Module, inputs: tuple) -> None:
        # The inserted modules are the identity on their recorded input; what can still go
        # wrong is forward code that depends on the containers (unpacking, pairing, one skip
        # tensor per block, an attribute of the last module), which the graph shows. A model
        # fx cannot trace is run instead (one forward; exporting both would cost more).
        if self.old_graph is False:
            self.old_graph = fx_graph_or_none(model, self.leaf_types)
        if self.old_graph is None:
            verify_outputs(result, inputs, self.reference, what=self.what)
        else:
            # a graph that differs only in how fx names things (a module shared between
            # blocks, deduplicated attribute reads) is settled by one forward
            def confirm() -> object:
                return verify_outputs(result, inputs, self.reference, what=self.what)

            args = (self.memo, inputs, self.leaf_types, self.what, confirm)
            check_deepened(model, self.old_graph, result, *args)

    def recipe_args(self) -> dict[str, Any]:
        return self.deepen_plan.recipe_args()

    def grow_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, result: nn.Module
    ) -> torch.optim.Optimizer:
        copies = {id(p): self.memo.get(id(p), p) for p in self.old_params}
        return extend_optimizer(optimizer, model, result, copies)


def deepen_with_plan(
    model: nn.Module,
    *,
    after: After = None,
    n: int = 1,
    example_inputs: tuple[Any, ...] | None = None,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Grown[DeepenPlan]:
    """:func:`deepen`, returning a :class:`~autogrow.transforms.skeleton.Grown`: the deeper
    model, the :class:`DeepenPlan` (the places ``after`` resolved into, and ``n``) and, when
    ``optimizer`` is given, the extended optimizer (else None). Arguments as for :func:`deepen`.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> grown = deepen_with_plan(net, n=2)
    >>> grown.plan
    DeepenPlan(places=(('1', 'identity'),), n=2)
    >>> len(grown.model), grown.optimizer is None
    (7, True)
    """
    return grow(
        model,
        DeepenTransform(after, n),
        example_inputs=example_inputs,
        inplace=inplace,
        verify=verify,
        tolerance=tolerance,
        optimizer=optimizer,
    )


@overload
def deepen(
    model: nn.Module,
    *,
    after: After = ...,
    n: int = ...,
    example_inputs: tuple[Any, ...] | None = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    optimizer: None = ...,
) -> nn.Module: ...


@overload
def deepen(
    model: nn.Module,
    *,
    after: After = ...,
    n: int = ...,
    example_inputs: tuple[Any, ...] | None = ...,
    inplace: bool = ...,
    verify: bool = ...,
    tolerance: float | None = ...,
    optimizer: torch.optim.Optimizer,
) -> tuple[nn.Module, torch.optim.Optimizer]: ...


def deepen(
    model: nn.Module,
    *,
    after: After = None,
    n: int = 1,
    example_inputs: tuple[Any, ...] | None = None,
    inplace: bool = False,
    verify: bool = True,
    tolerance: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module | tuple[nn.Module, torch.optim.Optimizer]:
    """Return a deeper model of the same class that computes the same function (Net2DeeperNet).

    Args:
        model: any ``nn.Module``; it is never modified unless ``inplace=True``.
        after: where to add depth (a name, an :class:`InsertionPoint`, or a list of them):

            * a stage (``nn.Sequential``/``nn.ModuleList``) whose last child is a residual
              block: ``n`` zeroed copies of that block are appended;
            * a residual block inside a stage: ``n`` zeroed copies are inserted after it;
            * any other module: ``n`` identity stacks are inserted after it (into its parent
              if that is an ``nn.Sequential``, otherwise the module is replaced by
              ``nn.Sequential(module, *new)``: its state_dict keys gain a ``.0``);
            * ``None``: ``n`` new blocks at the end of every run of residual blocks; for models
              without any, ``n`` identity stacks after the last hidden layer (the last
              activation module before the output layer, else the last module before it).
        n: how many blocks / identity stacks to insert at each place (an int >= 1).
        example_inputs: positional inputs for the recording forward and verification;
            inferred from the first Conv/Linear/Embedding when omitted.
        inplace: modify and return ``model`` itself (restored if verification fails).
        verify: compare outputs in eval mode and raise VerificationError beyond the tolerance.
        tolerance: the max relative error ``verify`` accepts; None: set by the model's dtype,
            1e-4 in float32, 8 × eps in float16/bfloat16 (``autogrow.verify.default_tolerance``).
        optimizer: a ``torch.optim`` optimizer whose state is shaped like the parameters (SGD,
            Adam, AdamW, RMSprop, Adagrad, Adamax, NAdam, RAdam, ...) over ``model``'s parameters;
            deepen then returns ``(model, new_optimizer)``: the old layers keep their state
            (cloned), the new layers join the param group of the layer they follow, without
            state (see :func:`autogrow.transforms.optimizer.extend_optimizer`). The given
            optimizer is left untouched, also with ``inplace=True``.

    >>> import torch, autogrow
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> deep = autogrow.deepen(net)
    >>> deep
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=8, bias=True)
      (3): ReLU()
      (4): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    return deepen_with_plan(
        model,
        after=after,
        n=n,
        example_inputs=example_inputs,
        inplace=inplace,
        verify=verify,
        tolerance=tolerance,
        optimizer=optimizer,
    ).returned()
