"""The segmentation pipeline shared by the napari widget, the ``vitseg`` CLI and Python users.

- :mod:`.segmenter`: the model (:class:`Segmenter`, its :class:`SegmenterConfig`): featurise,
  fit on scribbles, predict planes and stacks;
- :mod:`.batch`: the one implementation of applying a classifier to files and folders
  (input expansion, output naming, resume, atomic writes);
- :mod:`._persist`: the classifier file of a segmenter (save / load / metadata).
"""

from .batch import iter_apply_file, iter_apply_files, output_paths
from .segmenter import (
    DEFAULT_COLORS,
    SegmentationResult,
    Segmenter,
    SegmenterConfig,
    as_channels_last,
    uncertainty,
)

__all__ = [
    "DEFAULT_COLORS",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "as_channels_last",
    "iter_apply_file",
    "iter_apply_files",
    "output_paths",
    "uncertainty",
]
