"""Pixel classifiers (random forest, XGBoost) and the safe classifier file format."""

from ._engines import ENGINES, engine_info
from ._estimators import (
    CLASSIFIERS,
    RandomForestPixelClassifier,
    XGBoostPixelClassifier,
    make_classifier,
)
from ._file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    load_classifier_file,
    read_metadata,
    save_classifier_file,
)

__all__ = [
    "CLASSIFIERS",
    "ENGINES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RandomForestPixelClassifier",
    "XGBoostPixelClassifier",
    "engine_info",
    "load_classifier_file",
    "make_classifier",
    "read_metadata",
    "save_classifier_file",
]
