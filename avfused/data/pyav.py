"""PyAV, imported on first use: ``from avfused.data.pyav import av``.

Reading and writing video files needs PyAV; importing avfused.data and what imports it (the training loop,
the command line) does not, so a machine without PyAV (a GPU box with only torch) still runs the model, the
ops, ``avfused bench`` and the tests that need no video. The first attribute looked up on ``av`` imports the
real module, or raises MissingDependencyError saying how to get it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from avfused.errors import MissingDependencyError


class _LazyPyAV:
    """Stands for the ``av`` module; each attribute comes from the real one, imported once."""

    _module: ModuleType | None = None

    def __getattr__(self, name: str):
        if _LazyPyAV._module is None:
            try:
                _LazyPyAV._module = importlib.import_module("av")
            except ImportError as exc:
                raise MissingDependencyError(
                    f"reading or writing video files needs PyAV, which is not installed here ({exc}): pip install av"
                ) from exc
        return getattr(_LazyPyAV._module, name)


av = _LazyPyAV()
