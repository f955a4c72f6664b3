"""The segmentation pipeline shared by the napari widget, the ``vitseg`` CLI and Python users.

- :mod:`.segmenter`: the model (:class:`Segmenter`, its :class:`SegmenterConfig`): featurise,
  fit on scribbles, predict planes and stacks;
- :mod:`.batch`: the one implementation of applying a classifier to files and folders
  (input expansion, output naming, resume, atomic writes);
- :mod:`._persist`: the classifier file of a segmenter (save / load / metadata);
- :mod:`._importance`: :class:`FeatureImportances`, what a trained segmenter relies on (by
  feature family and scale);
- :mod:`.project`: the project file (image path, scribbles, classes, classifier) of a session.
"""

from ._importance import FeatureImportances
from .batch import iter_apply_file, iter_apply_files, output_paths
from .project import Project, load_project, save_project
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
    "FeatureImportances",
    "Project",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "as_channels_last",
    "iter_apply_file",
    "iter_apply_files",
    "load_project",
    "output_paths",
    "save_project",
    "uncertainty",
]
