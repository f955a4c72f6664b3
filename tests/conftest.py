"""Shared fixtures: the real sample data and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_data"
SHARED = REPO.parent / "shared" / "data"


def pytest_configure(config):
    # Importing timm after napari created its OpenGL canvas loads triton's LLVM next to the GL
    # driver's and segfaults the process (see napari_vitseg._widgets._compat); without CUDA,
    # triton is useless, so hide it for the whole suite: viewer tests (widgets, reader, samples)
    # and ViT tests run in one process, in any order.
    from napari_vitseg._widgets._compat import avoid_triton_crash

    avoid_triton_crash()


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path_factory, monkeypatch):
    """Never touch the user's weights folder, Hugging Face cache or the network in tests."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("VITSEG_WEIGHTS_DIR", str(root / "weights"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    yield


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def nanoparticles():
    """(image, scribbles, ground_truth) of the real TEM nanoparticle sample (518 x 518, 2 classes)."""
    import tifffile

    d = SAMPLES / "tem_nanoparticles"
    return tuple(tifffile.imread(d / f) for f in ("image.tif", "scribbles.tif", "ground_truth.tif"))


@pytest.fixture(scope="session")
def cells_stack():
    """(stack, scribbles) of the real 6-plane TEM cells stack (3 classes)."""
    import tifffile

    d = SAMPLES / "tem_cells_stack"
    return tifffile.imread(d / "image.tif"), tifffile.imread(d / "scribbles.tif")


@pytest.fixture
def two_region_image():
    """A 64 x 64 noisy image with a bright right half and scribbles in both halves."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(64, 64)).astype(np.float32)
    image[:, 32:] += 4
    scribbles = np.zeros((64, 64), np.uint8)
    scribbles[10:50, 5:10] = 1
    scribbles[10:50, 50:55] = 2
    return image, scribbles


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data(name)``: the folder of a data set in ../shared/data (CI has it beside the checkout;
    ``VITSEG_SHARED_DATA`` overrides the location)."""

    def get(name: str) -> Path:
        p = Path(os.environ.get("VITSEG_SHARED_DATA", SHARED)) / name
        if not p.exists():
            pytest.fail(f"shared data {p} is missing: CI must run with ../shared beside the repository")
        return p

    return get
