"""napari-vitseg: trainable segmentation of microscopy with upsampled vision-transformer
features (DINOv2, ALiBi-DINOv2, SINDER-repaired DINOv2) and classical multiscale filters.

The public front door; names are imported on first use, so ``import napari_vitseg`` is cheap
(no torch, no napari):

- :class:`Segmenter`, :class:`SegmenterConfig` (:mod:`napari_vitseg.pipeline`): train on
  scribbles, segment images and stacks, apply to files, save / load classifier files;
- :class:`FeatureConfig` (:mod:`napari_vitseg.features`): which features;
- :func:`create_backbone`, :func:`list_backbones` (:mod:`napari_vitseg.backbones`);
- :func:`run`: run a long job (an ``iter_*`` generator) to completion.

The library is headless; the napari widgets live in :mod:`napari_vitseg._widgets`.

Examples
--------
>>> import napari_vitseg
>>> "dinov2_vits14_reg" in napari_vitseg.list_backbones()
True
>>> napari_vitseg.SegmenterConfig().classifier
'rf'
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Segmenter": "napari_vitseg.pipeline",
    "SegmenterConfig": "napari_vitseg.pipeline",
    "FeatureConfig": "napari_vitseg.features",
    "create_backbone": "napari_vitseg.backbones",
    "list_backbones": "napari_vitseg.backbones",
    "run": "napari_vitseg._progress",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_vitseg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
