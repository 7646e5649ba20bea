"""The axis-term algebra: what each tensor axis is made of, and which axes carry the same units.

This layer imports nothing else of autogrow. Rules build terms, the analysis unifies them in an
:class:`AxisStore`, and the transforms fold them into sizes and unit maps (:class:`TermFold`:
one method per term kind).
"""

from .fold import ResolvedFold, TermFold
from .sizes import NewSize, new_size
from .store import AxisStore
from .terms import Atom, Cat, Fixed, Prod, Sel, Stack, Term, Zip, cat, prod, zip_

__all__ = [
    "Atom",
    "AxisStore",
    "Cat",
    "Fixed",
    "NewSize",
    "Prod",
    "ResolvedFold",
    "Sel",
    "Stack",
    "Term",
    "TermFold",
    "Zip",
    "cat",
    "new_size",
    "prod",
    "zip_",
]
