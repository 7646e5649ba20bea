"""``python -m autogrow``: the same as the ``autogrow`` command (see :mod:`autogrow.cli`)."""

from .cli import main

raise SystemExit(main())
