"""Growth search: an Optuna study whose trials grow trained parents (Net2Net) and train briefly.

A search-space file declares a :class:`SearchSpace` (seed model factory, data, training
recipe, growth operators, limits, objectives); :func:`run` runs or resumes the study, from
Python or as ``autogrow search <file>``. See ``docs/search.md``.

Optuna is imported only by :func:`run` and the modules that need it, so ``import autogrow``
and ``import autogrow.search`` never require it.

>>> from autogrow.search import Growth, SearchSpace, Training
>>> Growth().kinds
('widen', 'deepen')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use: `autogrow --help` registers the search commands
    from .space import Growth, SearchSpace, Training, load_space  # without importing torch

__all__ = ["Growth", "SearchSpace", "Training", "load_space", "run", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("Growth", "SearchSpace", "Training", "load_space"):
        from . import space

        return getattr(space, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(space: SearchSpace, n_trials: int = 20, **kwargs: Any) -> Any:
    """Run or resume a growth search; see :func:`autogrow.search.runner.run` for arguments.

    .. code-block:: python

        from autogrow.search import load_space, run
        study = run(load_space("search_spaces/digits_mlp.py"), n_trials=10, workers=2)
    """
    from .runner import run as _run

    return _run(space, n_trials, **kwargs)


def load_checkpoint(run_dir: str, trial: int | None = None, *, trust: bool = False) -> Any:
    """The model a trial of the search in ``run_dir`` stored (default: the best trial).

    Rebuilt by ``autogrow.load`` from safetensors and JSON; nothing is unpickled. ``trust`` is
    ``autogrow.load``'s: a seed factory that is not allow-listed (your own) is called only
    after ``autogrow.register_factory`` or with ``trust=True``.

    .. code-block:: python

        model = autogrow.search.load_checkpoint("runs/digits_mlp")
    """
    from pathlib import Path

    from . import checkpoints
    from .objective import rank_key
    from .report import _completed
    from .runner import artifact_store, open_study

    study = open_study(run_dir)
    done = _completed(study)
    chosen = [t for t in done if trial is None or t.number == trial]
    if not chosen:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(
            f"{run_dir}: no completed trial{'' if trial is None else f' number {trial}'} "
            f"with a checkpoint; completed: {sorted(t.number for t in done)}"
        )
    best = min(chosen, key=rank_key)
    store = artifact_store(Path(run_dir))
    return checkpoints.load_model(store, best.user_attrs["checkpoint"], trust=trust)
