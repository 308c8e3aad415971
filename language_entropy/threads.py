"""The thread count of a run, fixed before any work: part of what makes its floating-point results reproducible.

Matrix products and reductions split their work across threads, and the split decides the order in
which floating-point numbers are added, so the same run with 1 and with 2 threads ends with different
weights. Every stage therefore sets one thread count, `train.threads`, for torch and for the math
libraries under it (OpenMP, MKL, OpenBLAS), with their dynamic adjustment to load switched off, and
records it. `auto` resolves to every core this process may use (its CPU affinity), the fastest choice
for one run alone; a sweep that runs N experiments side by side on N cores sets 1.
"""

from __future__ import annotations

import os
import sys

LIBRARY_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity (macOS)
        return os.cpu_count() or 1


def resolve_threads(setting: int | str) -> int:
    """`auto` -> the cores this process may use; a number -> itself."""
    return usable_cores() if setting == "auto" else int(setting)


def apply_threads(setting: int | str) -> int:
    """Fix the thread count of this process (and of the processes it starts) and return it.

    The libraries read their variables when they load (torch takes OMP_NUM_THREADS as its count), so a
    stage calls this before importing torch or numpy; a torch already loaded is set directly. Torch is
    not imported here: the data stage never needs it (0.9 s of its 1.9 s).
    """
    threads = resolve_threads(setting)
    os.environ.update({name: str(threads) for name in LIBRARY_THREAD_VARIABLES})
    os.environ.update(OMP_DYNAMIC="FALSE", MKL_DYNAMIC="FALSE")  # no fewer threads than asked under load
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
