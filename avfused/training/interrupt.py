"""Ctrl-C while training, at a point where the run can be saved: the first SIGINT only raises a flag,
which the loop reads between steps (after the step's counters moved and its saves finished), so the
checkpoint it then writes is the state of whole steps only; a second SIGINT interrupts at once (and
nothing is saved: the last checkpoint on disk stays the resume point). Data-loader workers forked
meanwhile ignore SIGINT (a terminal sends it to them too), so the step's batches still arrive.

    with deferred_interrupts() as interrupts:   # installs the handler (main thread only; a no-op elsewhere)
        ...
        if interrupts.requested: save, then raise KeyboardInterrupt
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("avfused")


class Interrupts:
    """Whether a stop was asked for (the first SIGINT); see the module docstring."""

    def __init__(self) -> None:
        self.requested = False
        self.owner = os.getpid()

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self.owner:  # a forked data-loader worker inherited the handler: the trainer decides
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: stopping after this step and saving it (press Ctrl-C again to stop at once, unsaved)")


@contextmanager
def deferred_interrupts() -> Iterator[Interrupts]:
    """SIGINT handled as the module docstring says while the block runs; the previous handler afterwards."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts  # signal handlers can only be set in the main thread; Ctrl-C raises as usual
        return
    previous = signal.signal(signal.SIGINT, interrupts._handle)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)
