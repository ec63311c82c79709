"""How many CPU threads torch should use: one per core that is not already busy.

On a shared machine, OpenMP threads that outnumber the idle cores wait on each other at every
operator and a training step gets many times slower (measured: 60 s instead of 10 s per demo step
with 2 threads on 2 cores under a load of 8). ``idle_cores()`` counts the cores this process may
use minus the 1-minute load average, at least 1.
"""

from __future__ import annotations

import os

import torch


def idle_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = int(round(os.getloadavg()[0]))
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def set_threads(requested: int) -> int:
    """Use ``requested`` threads (0: idle_cores()); returns the number set."""
    count = requested if requested > 0 else idle_cores()
    torch.set_num_threads(count)
    return count
