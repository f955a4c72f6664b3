"""Work-arounds for third-party problems that only show inside napari."""

from __future__ import annotations

import sys

__all__ = ["avoid_triton_crash"]


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
