"""Moved to :mod:`autogrow.axes.terms` and :mod:`autogrow.axes.store`; this name is kept so
that old imports keep working."""

from ..axes.store import *  # noqa: F403
from ..axes.terms import *  # noqa: F403
