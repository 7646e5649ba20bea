"""The axis-term algebra: what each tensor axis is made of, and which axes carry the same units.

This layer imports nothing else of autogrow. Rules build terms, the analysis unifies them in an
:class:`AxisStore`, and the transforms fold them into sizes and unit maps.
"""

from .terms import Atom, AxisStore, Cat, Fixed, Prod, Sel, Stack, Term, Zip, cat, prod, zip_

__all__ = [
    "Atom",
    "AxisStore",
    "Cat",
    "Fixed",
    "Prod",
    "Sel",
    "Stack",
    "Term",
    "Zip",
    "cat",
    "prod",
    "zip_",
]
