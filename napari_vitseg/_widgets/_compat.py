"""Work-arounds for third-party problems that only show inside napari."""

from __future__ import annotations

import os
import sys

__all__ = ["MMAP_THRESHOLD", "avoid_triton_crash", "return_large_frees"]

#: Allocations from this size up get their own memory mapping (glibc ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD = 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_malloc_tuned = False


def _system_llvm_loaded() -> bool:
    """Whether a system ``libLLVM`` (Mesa's software OpenGL) is mapped into this process (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as f:
            return "libLLVM" in f.read()
    except OSError:
        return False


def avoid_triton_crash() -> bool:
    """Keep torch from importing triton where that would crash napari.

    ``timm`` imports ``torchvision``, which imports ``torch._dynamo``, which imports ``triton``
    when it is installed. Loading triton's LLVM after the OpenGL driver's (napari's canvas with
    software OpenGL: Mesa llvmpipe under Xvfb, VMs, remote desktops) segfaults the whole process,
    in any thread. triton only serves ``torch.compile`` on GPUs, which napari-vitseg does not use,
    so it is marked as absent (``sys.modules['triton'] = None``; ``import triton`` then raises
    ImportError, which torch handles) when there is no CUDA device, or when a system libLLVM is
    already loaded. Call it before a ViT backbone is first built in napari (the job runner,
    ``_jobs.JobRunner``, does for jobs that may use torch; the diagnostics widget before it imports
    timm).

    Returns
    -------
    bool
        Whether triton was hidden.
    """
    if "triton" in sys.modules:
        return False
    if not _system_llvm_loaded():
        import torch  # a dependency; triton is the optional package

        if torch.cuda.is_available():
            return False
    sys.modules["triton"] = None
    return True


def return_large_frees() -> bool:
    """Make glibc give large freed blocks back to the system at once (Linux, once per process).

    A live job allocates big temporaries (a plane's feature scratch, per-tree probabilities,
    predictions) in several threads: the job's worker, scikit-learn's, OpenCV's, dask's.
    glibc raises its mmap threshold after the first such block is freed (up to 32 MiB), so the
    next ones come from per-thread arenas, which keep them after ``free``: on a lazy 4 GB stack
    napari grew by ~20 MiB per stroke, to ~250 MiB above its working set (benchmarks/
    bench_stack_widget.py). Fixing the threshold at :data:`MMAP_THRESHOLD` (``mallopt``) maps
    every block of 1 MiB or more on its own and unmaps it when freed: the process stays at its
    working set. Nothing is changed when the user tuned glibc (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_ARENA_MAX`` or ``MALLOC_TOP_PAD_`` in the environment) or on other C libraries.

    Returns
    -------
    bool
        Whether the threshold was set (now or by an earlier call).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux") or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_")):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False
    return _malloc_tuned
