"""Non-integer growth of groups a LayerNorm or RMSNorm normalises: *filled* units.

Replicating units keeps a norm's mean and variance only when every unit is replicated equally
often, so such groups ("uniform") used to grow by whole multiples only. A group grows from
``n`` to any ``n'`` instead as ``k = n' // n`` replicas of every unit plus ``r = n' - k n``
*filled* units that hold, in every tensor of the group, a value fixed by the old units:

* ``mean`` (groups a LayerNorm reads): the mean of the old units. The norm's mean is unchanged
  and its variance is ``ρ = k n / n'`` times the old one;
* ``zero`` (groups an RMSNorm reads): zero. The mean square is ``ρ`` times the old one.

With the norm's ``eps`` times ``ρ`` (``var' + eps' = ρ (var + eps)``) the normalised old units
are the old ones times ``ρ^-½``, which the norm's weight times ``ρ^½`` undoes; the filled units
normalise to exactly 0 (their bias is set to 0), so whatever reads them sees nothing.
docs/widen.md ("Non-integer widths under LayerNorm and RMSNorm") has the derivation.

:func:`fill_groups` walks the traced graph once per kind and follows, for every tensor axis of a
candidate group, what its filled units hold (``stream``: the group's fill; ``zero``) and how its
old units are scaled (a power of ``ρ``). Each op either has a known effect (linear layers write
the fill with mean or zero rows, norms rescale, residual additions keep it, the RMSNorm written
out as ``x * rsqrt(mean(x²) + eps) * w`` rescales its eps) or makes the group unfillable: the
group then keeps growing by whole multiples, as before. So a filled group is exact by
construction, with or without verification.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..rules.context import Analysis
from .fill_walk import AxisFill, FillWalk

__all__ = ["FILL_KINDS", "AxisFill", "FillGroup", "fill_groups", "fill_ratio", "filled_axes"]

FILL_KINDS = ("mean", "zero")


@dataclass
class FillGroup:
    """What filling one group needs: its kind, the fill of each parameter axis in it, and the
    ``eps`` attributes to multiply by a power of ``ρ`` ((module, attribute, old value, power))."""

    kind: str
    axes: dict[tuple[str, int], AxisFill] = field(default_factory=dict)
    eps: list[tuple[str, str, float, float]] = field(default_factory=list)


def fill_ratio(old: int, new: int) -> float:
    """``ρ = k n / n'``: how much a norm's variance (or mean square) shrinks when ``old`` units
    grow to ``new`` as ``k = new // old`` replicas of each plus filled units.

    >>> fill_ratio(4, 6)
    0.6666666666666666
    """
    return (new // old) * old / new


def filled_axes(
    groups: Mapping[int, FillGroup], widths: Mapping[int, tuple[int, int]]
) -> tuple[dict[tuple[str, int], tuple[str, float]], list[tuple[str, str, float]]]:
    """For the groups that grow by filling (group id -> (old, new) width): each parameter
    axis's (fill, factor), and the (module, attribute, new value) of each norm's eps."""
    axes: dict[tuple[str, int], tuple[str, float]] = {}
    eps: list[tuple[str, str, float]] = []
    for gid, group in groups.items():
        rho = fill_ratio(*widths[gid])
        for key, f in group.axes.items():
            axes[key] = (f.fill, rho**f.power)
        eps += [(module, attr, value * rho**power) for module, attr, value, power in group.eps]
    return axes, eps


def fill_groups(
    analysis: Analysis, candidates: Iterable[int]
) -> tuple[dict[int, FillGroup], dict[int, str]]:
    """The candidate groups (root atom ids) that can grow by filling, with how; and for the
    others, why not (the op where the walk that got furthest stopped).

    Groups that pass under both kinds take ``mean`` (nothing in them needs rescaling). Groups
    that appear inside a composite layout (heads × head_dim, a concatenation), or meet an op
    whose effect on filled units is unknown, are left out.
    """
    candidates = set(candidates)
    out: dict[int, FillGroup] = {}
    why: dict[int, tuple[int, str]] = {}
    if not candidates:
        return out, {}
    resolved: dict = {}  # the axes' resolution, shared by both walks (the store is fixed)
    for kind in FILL_KINDS:
        walk = FillWalk(analysis, candidates - out.keys(), kind, resolved)
        walk.run()
        walk.check_every_axis()
        for gid in walk.gids - walk.bad.keys():
            out[gid] = FillGroup(kind, walk.axes.get(gid, {}), walk.eps.get(gid, []))
        for gid, (at, reason) in walk.bad.items():
            if at >= why.get(gid, (-1, ""))[0]:
                why[gid] = (at, reason)
    return out, {gid: reason for gid, (_, reason) in why.items() if gid not in out}
