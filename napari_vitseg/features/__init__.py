"""Per-pixel features: classical multiscale filters and upsampled ViT patch features."""

from .cache import FeatureCache, content_digest
from .config import CLASSICAL_FAMILIES, UPSAMPLERS, FeatureConfig
from .stack import Featurizer

__all__ = ["CLASSICAL_FAMILIES", "UPSAMPLERS", "FeatureCache", "FeatureConfig", "Featurizer", "content_digest"]
