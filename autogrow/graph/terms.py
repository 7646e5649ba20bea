"""Moved to :mod:`autogrow.axes.terms`; this name is kept so that old imports keep working."""

from ..axes.terms import *  # noqa: F403
from ..axes.terms import __all__  # noqa: F401
