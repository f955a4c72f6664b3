"""Diagnostics of ViT backbones: positional-bias linear probe, token norms / defect directions,
feature PCA.

Public API
----------
iter_positional_probe, ProbeResult, probe_targets, linear_probe_r2, channel_probe_r2
    The positional-bias linear probe (Pawlowsky et al. 2026, arXiv 2603.16840).
token_norms, flag_high_norm, norm_histogram, angle_map, sinder_defects, iter_token_norms, NormResult
    High-norm tokens (Darcet et al., ICLR 2024) and SINDER defect angles (Wang et al., ECCV 2024).
pca_rgb
    PCA-RGB views of patch features (basis: :class:`napari_vitseg.features.vit.PCAReducer`).
iter_diagnose, DiagnosticsResult
    Everything above for several backbones and images in one job (CLI and widget).
prepare_image
    Image -> RGB in [0, 1] cropped to whole patches.

Figures (:mod:`.figures`) and the report writer (:mod:`.report`) import matplotlib and are
imported on demand.
"""

from ._common import (
    PreparedImage,
    TokenMaps,
    extract_tokens,
    layer_extent,
    make_backbone,
    prepare_image,
)
from .diagnose import BackboneDiagnostics, DiagnosticsResult, iter_diagnose
from .norms import (
    NormResult,
    angle_between,
    angle_map,
    block_token_norms,
    defect_directions_or_none,
    empirical_direction,
    flag_high_norm,
    iter_token_norms,
    norm_histogram,
    sinder_defects,
    token_norms,
)
from .pca import pca_rgb
from .positional import (
    TARGETS,
    ProbeResult,
    channel_probe_r2,
    iter_positional_probe,
    linear_probe_r2,
    probe_targets,
    split_tokens,
)

__all__ = [
    "TARGETS",
    "BackboneDiagnostics",
    "DiagnosticsResult",
    "NormResult",
    "PreparedImage",
    "ProbeResult",
    "TokenMaps",
    "angle_between",
    "angle_map",
    "block_token_norms",
    "channel_probe_r2",
    "defect_directions_or_none",
    "iter_diagnose",
    "empirical_direction",
    "extract_tokens",
    "flag_high_norm",
    "layer_extent",
    "linear_probe_r2",
    "make_backbone",
    "norm_histogram",
    "pca_rgb",
    "iter_positional_probe",
    "prepare_image",
    "probe_targets",
    "sinder_defects",
    "split_tokens",
    "iter_token_norms",
    "token_norms",
]
