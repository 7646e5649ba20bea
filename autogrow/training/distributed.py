"""What growth needs from torch.distributed: agreement between ranks, DDP and FSDP2 state.

Every collective here runs on the default process group, on every rank, in the same order.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def world() -> int:
    """The number of ranks (1 without an initialised process group)."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_world_size()
    return 1


def rank() -> int:
    d = torch.distributed
    return d.get_rank() if world() > 1 else 0


def gather(obj: Any) -> list[Any]:
    """``obj`` of every rank (``[obj]`` alone)."""
    if world() == 1:
        return [obj]
    out: list[Any] = [None] * world()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks."""
    if world() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world()


def digest(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """A hash of the model's parameter and buffer names, shapes and bytes, and of the
    optimizer's tensor state (equal on every rank iff the grown training state is)."""
    h = hashlib.blake2b(digest_size=16)

    def add(name: str, t: torch.Tensor) -> None:
        t = t.detach()
        if hasattr(t, "full_tensor"):  # a DTensor
            t = t.full_tensor()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())

    for name, t in model.state_dict(keep_vars=True).items():
        add(name, t)
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        for p, state in optimizer.state.items():
            for key, v in sorted(state.items()):
                if isinstance(v, torch.Tensor):
                    add(f"{names.get(id(p), '?')}/{key}", v)
    return h.hexdigest()


def is_ddp(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def ddp_kwargs(model: nn.parallel.DistributedDataParallel) -> dict[str, Any]:
    """The constructor arguments of a DDP wrapper, read back from it (those that differ
    from the constructor's defaults)."""
    read: dict[str, Any] = {
        "device_ids": model.device_ids or None,
        "output_device": model.output_device,
        "dim": model.dim,
        "find_unused_parameters": model.find_unused_parameters,
        "gradient_as_bucket_view": model.gradient_as_bucket_view,
        "static_graph": bool(getattr(model, "static_graph", False)),
        "process_group": getattr(model, "process_group", None),
    }
    sync = getattr(model, "forward_sync_buffers", getattr(model, "broadcast_buffers", True))
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    read["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = sync
    cap = getattr(model, "bucket_bytes_cap", None)
    if cap:
        read["bucket_cap_mb"] = cap / (1024 * 1024)
    kw = {}
    for k, v in read.items():
        default = params[k].default if k in params else inspect.Parameter.empty
        if k in params and v is not None and not (default is not None and v == default):
            kw[k] = v
    if kw.get("forward_sync_buffers", True) is True:
        kw.pop("forward_sync_buffers", None)
    if kw.get("bucket_cap_mb") == 25.0:
        kw.pop("bucket_cap_mb")
    return kw


def adopt(old: nn.Module, new: nn.Module) -> None:
    """Make the module object ``old`` the module ``new`` (same class): it takes ``new``'s
    attributes, submodules, parameters and hooks (the two share them from now on), so every
    reference to ``old`` (a Trainer's ``model`` and ``model_wrapped``, its inner loop's local,
    an Accelerator's list) sees the grown model.

    >>> import torch
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 4)
    >>> adopt(a, b); a.out_features, a.weight is b.weight
    (4, True)
    """
    if type(old) is not type(new):
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"cannot adopt a {type(new).__name__} into a {type(old).__name__}"
        )
    old.__dict__ = new.__dict__


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def _full() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=False)


def gather_fsdp(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, template: nn.Module
) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """An unsharded copy of an FSDP2 ``model`` (and ``optimizer``) on every rank.

    ``template`` is an unsharded module of the same architecture (on any device, ``meta``
    too); a copy of it is materialised on the model's device and loaded with the gathered state (the
    ``torch.distributed.checkpoint.state_dict`` helpers, full state dicts on every rank).
    Non-persistent buffers, which FSDP2 leaves unsharded, are copied from ``model``.
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    msd = get_model_state_dict(model, options=_full())
    osd = get_optimizer_state_dict(model, optimizer, options=_full()) if optimizer else None
    local = next(iter(model.parameters()), None)
    device = getattr(local, "device", torch.device("cpu"))
    plain = meta_template(template).to_empty(device=device)  # template itself stays as it is
    try:
        plain.load_state_dict(msd, strict=False, assign=True)
    except RuntimeError as e:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"the unsharded architecture (Grower(build=...)) does not match the sharded model: {e}"
        ) from e
    own = dict(plain.named_buffers())
    for name, b in model.named_buffers():
        if name in own and name not in msd:
            _set_buffer(plain, name, b.detach().clone())
    missing = sorted(set(plain.state_dict()) - set(msd) - set(own))
    if missing:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"the template model for FSDP growth has entries the sharded model lacks: {missing}"
        )
    if optimizer is None:
        return plain, None
    return plain, optimizer_from_state(optimizer, plain, osd)


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._buffers[leaf] = value


def optimizer_from_state(
    like: torch.optim.Optimizer, model: nn.Module, osd: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """An optimizer of ``like``'s class over ``model`` from a name-keyed (FQN) state dict."""
    from ..transforms.optimizer import _constructor_defaults

    named = dict(model.named_parameters())
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [named[n] for n in g["params"]]}
        for g in osd["param_groups"]
    ]
    opt = type(like)(groups, **_constructor_defaults(like))
    for fqn, st in osd["state"].items():
        opt.state[named[fqn]] = {
            k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()
        }
    return opt


def reshard_fsdp(
    grown: nn.Module,
    grown_opt: torch.optim.Optimizer | None,
    shard: Callable[[nn.Module], nn.Module | None],
) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    """Shard ``grown`` with ``shard`` and give it an optimizer holding ``grown_opt``'s state."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    osd = get_optimizer_state_dict(grown, grown_opt, options=_full()) if grown_opt else None
    sharded = shard(grown)
    sharded = grown if sharded is None else sharded
    if grown_opt is None:
        return sharded, None
    named = dict(sharded.named_parameters())
    from ..transforms.optimizer import _constructor_defaults

    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [named[n] for n in g["params"]]}
        for g in osd["param_groups"]
    ]
    opt = type(grown_opt)(groups, **_constructor_defaults(grown_opt))
    opt.defaults = dict(grown_opt.defaults)
    # strict=False: parameters a deepen added have no state yet (they start fresh)
    options = StateDictOptions(full_state_dict=True, cpu_offload=False, strict=False)
    set_optimizer_state_dict(sharded, opt, optim_state_dict=osd, options=options)
    return sharded, opt


def meta_template(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and persistent buffers are on the ``meta`` device
    (the architecture only; non-persistent buffers are kept)."""
    memo: dict[int, Any] = {}
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in memo:
            continue
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)
