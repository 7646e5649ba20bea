"""Float config fields that growth changes: a norm's ``eps`` (``rms_norm_eps``, ...).

Widening a group under LayerNorm/RMSNorm by filled units multiplies each norm's ``eps`` by
``ρ = k n / n'`` (``autogrow.transforms.fill``). A transformers model builds its norms' eps from
one config field, so that field must take the new value for ``from_pretrained`` to rebuild the
model; where the norms built from one field would need different values (groups that grow by
different ratios), the config cannot describe the grown model and growth is refused.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ConstraintError

__all__ = ["grown_float_fields", "unset_float_attrs"]


def _meta_modules(model: nn.Module, config: Any) -> dict[str, nn.Module]:
    with torch.device("meta"):
        return dict(type(model)(config).named_modules())


def _float_attrs(modules: dict[str, nn.Module]) -> dict[tuple[str, str], float]:
    return {
        (name, attr): value
        for name, m in modules.items()
        for attr, value in vars(m).items()
        if type(value) is float and not attr.startswith("_")
    }


def _field_users(model: nn.Module, olds: set[float]) -> dict[str, set[tuple[str, str]]]:
    """Per float config field whose value is one of ``olds``: the module attributes it sets
    (those that move on meta when the field does)."""
    config = model.config
    built = _float_attrs(_meta_modules(model, config))
    users: dict[str, set[tuple[str, str]]] = {}
    for field, value in vars(config).items():
        if type(value) is not float or field.startswith("_") or value not in olds:
            continue
        probe = copy.deepcopy(config)
        setattr(probe, field, value * 2 + 1)
        moved = _float_attrs(_meta_modules(model, probe))
        users[field] = {k for k, v in moved.items() if k in built and v != built[k]}
    return users


def unset_float_attrs(
    model: nn.Module, attrs: list[tuple[str, str]], others: set[tuple[str, str]]
) -> str | None:
    """Why ``model.config`` cannot state new values of the float module attributes ``attrs``
    ((module, attribute)): one that no config field sets, or a field that also sets an
    attribute that must keep its value (not in ``attrs`` or ``others``); or None."""
    have = _float_attrs(dict(model.named_modules()))
    wanted = [k for k in attrs if k in have]
    if not wanted:
        return None
    users = _field_users(model, {have[k] for k in wanted})
    name = type(model.config).__name__
    for m, a in wanted:
        fields = [f for f, keys in users.items() if (m, a) in keys]
        if not fields:
            return (
                f"no field of {name} sets {m}.{a} (a norm's eps, which filled units rescale), "
                "so from_pretrained would rebuild the model differently"
            )
        for f in fields:
            stays = sorted(users[f] - set(attrs) - others)
            if stays:
                return (
                    f"{name}.{f} sets both {m}.{a}, which filled units rescale, and "
                    f"{'.'.join(stays[0])}, which keeps its value"
                )
    return None


def grown_float_fields(result: nn.Module) -> dict[str, float]:
    """The float fields of ``result.config`` (still the old config) that must change so that
    the config builds the float module attributes ``result`` now has (field → new value).

    Raises:
        ConstraintError: a changed attribute that no field sets, or modules built from one
            field that now hold different values.
    """
    config = result.config
    built = _float_attrs(_meta_modules(result, config))
    have = _float_attrs(dict(result.named_modules()))
    changed = {k: v for k, v in have.items() if k in built and built[k] != v}
    if not changed:
        return {}
    users = _field_users(result, {built[k] for k in changed})
    out: dict[str, float] = {}
    for field, keys in users.items():
        values = {have[k] for k in keys if k in have}
        if not keys & changed.keys():
            continue
        if len(values) > 1:
            shown = ", ".join(f"{m}.{a} = {have[(m, a)]:.3g}" for m, a in sorted(keys)[:4])
            raise ConstraintError(
                f"{type(config).__name__}.{field} sets the eps of several norms that the widened "
                f"model needs different values for ({shown}): norms over groups that grow by "
                "different ratios. Widen those groups by one factor, or by whole multiples."
            )
        out[field] = values.pop()
    unset = sorted(k for k in changed if not any(k in users[f] for f in out))
    if unset:
        m, a = unset[0]
        raise ConstraintError(
            f"widening changes {m}.{a} (a norm's eps, to {changed[(m, a)]:.3g}), which no field "
            f"of {type(config).__name__} sets, so from_pretrained would rebuild the model "
            "differently. Widen the groups under that norm by whole multiples instead."
        )
    return out
