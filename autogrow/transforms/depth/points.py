"""The vocabulary of deepening: insertion kinds and insertion points.

An :class:`InsertionPoint` says where :func:`~autogrow.deepen` can add depth and what it would
insert there; its ``kind`` is an :class:`InsertionKind`, a ``str`` enum, so comparisons with the
plain strings ``"block"``/``"identity"`` (as recipes store them in JSON) still hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class InsertionKind(str, Enum):
    """How depth is added at a place: a zeroed copy of a residual block, or identity layers.

    A ``str`` enum: members equal, format and print as their values.

    >>> InsertionKind.BLOCK == "block", str(InsertionKind.IDENTITY), f"[{InsertionKind.BLOCK}]"
    (True, 'identity', '[block]')
    >>> InsertionKind("identity") is InsertionKind.IDENTITY
    True
    """

    BLOCK = "block"
    IDENTITY = "identity"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:  # shown like the plain string it equals
        return repr(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True)
class InsertionPoint:
    """A place where :func:`deepen` can add depth, and what it would insert there.

    Attributes:
        where: qualified module name (pass the point, or this name, as ``after=``).
        kind: :attr:`InsertionKind.BLOCK` (``"block"``: a zeroed copy of a residual block) or
            :attr:`InsertionKind.IDENTITY` (``"identity"``: identity layers after the module);
            a plain string naming a kind is turned into the member.
        inserts: what would be inserted, in words.
        exact_in_train: whether the inserted layers are also the identity in train mode
            (False when a BatchNorm is inserted: it normalises with batch statistics).

    >>> print(InsertionPoint("fc1", "identity", "Linear(8, 8)=I, PReLU(8, init=1)", True))
    fc1  [identity]  Linear(8, 8)=I, PReLU(8, init=1)  (exact in train mode too)
    """

    where: str
    kind: InsertionKind
    inserts: str
    exact_in_train: bool
    _zero: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        # Any other value is left as given: deepen names it in its error.
        if type(self.kind) is str and self.kind in _KINDS:
            object.__setattr__(self, "kind", InsertionKind(self.kind))

    def __str__(self) -> str:
        train = "exact in train mode too" if self.exact_in_train else "exact in eval mode"
        return f"{self.where or '<model>'}  [{self.kind}]  {self.inserts}  ({train})"


_KINDS = {k.value for k in InsertionKind}
