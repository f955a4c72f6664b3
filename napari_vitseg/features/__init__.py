"""Per-pixel features: classical multiscale filters and upsampled ViT patch features."""

from .cache import FeatureCache, content_digest
from .config import (
    ALL_FAMILIES,
    CLASSICAL_FAMILIES,
    DEFAULT_FAMILIES,
    EXTRA_FAMILIES,
    UPSAMPLERS,
    FeatureConfig,
)
from .stack import Featurizer
from .volume import StackPlane

__all__ = ["ALL_FAMILIES", "CLASSICAL_FAMILIES", "DEFAULT_FAMILIES", "EXTRA_FAMILIES", "UPSAMPLERS",
           "FeatureCache", "FeatureConfig", "Featurizer", "StackPlane", "content_digest"]
