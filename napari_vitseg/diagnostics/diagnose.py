"""One job that runs every diagnostic for several backbones on several images.

Each image goes through each backbone once; the same forward pass feeds the positional probe
(every block and the final features), the token norms / defect angles (blocks before the final
LayerNorm) and the PCA-RGB view (final features). The CLI (``vitseg diagnose``) and the napari
Diagnostics widget both run :func:`iter_diagnose`.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._progress import Progress
from .._validation import VitsegError
from ._common import PreparedImage, extract_tokens, layer_extent, make_backbone
from .norms import NormResult, analyse_tokens, defect_directions_or_none, norm_result_from
from .pca import pca_rgb
from .positional import (
    ProbeResult,
    _prepare_all,
    image_info,
    layer_labels,
    probe_result_from,
    probe_token_maps,
    select_maps,
)

__all__ = ["BackboneDiagnostics", "DiagnosticsResult", "iter_diagnose"]

RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS — not a pretrained model"


@dataclass
class BackboneDiagnostics:
    """All diagnostics of one backbone.

    Attributes
    ----------
    backbone : str
    pretrained : bool
    position : str
        The backbone's positional encoding ('learned', 'alibi' or 'none').
    probe : ProbeResult
    norms : NormResult
    pca : list of (gh, gw, 3) ndarray of float32
        PCA-RGB of the final features, one per image (basis shared across the images when
        ``pca_shared``).
    """

    backbone: str
    pretrained: bool
    position: str
    probe: ProbeResult
    norms: NormResult
    pca: list

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "pretrained": self.pretrained, "position": self.position,
                "probe": self.probe.to_dict(), "norms": self.norms.to_dict()}


@dataclass
class DiagnosticsResult:
    """Result of :func:`iter_diagnose`.

    Attributes
    ----------
    results : list of BackboneDiagnostics
        One per backbone that could be built, in the order asked.
    missing : dict of str -> str
        Backbones that could not be built (for example, weights not on disk) and why.
    images : list of PreparedImage
        The cropped images (all backbones share the 14-px patch grid).
    settings : dict
    """

    results: list
    missing: dict
    images: list
    settings: dict = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        """True if any result comes from random weights."""
        return any(not r.pretrained for r in self.results)

    def extent(self, i: int) -> dict:
        """``scale`` / ``translate`` placing image ``i``'s token maps on its pixels (napari layers)."""
        return layer_extent(self.images[i])

    def to_dict(self) -> dict:
        from .. import __version__

        out = {"napari_vitseg_version": __version__,
               "images": [image_info(p) for p in self.images],
               "settings": self.settings,
               "missing_backbones": self.missing,
               "backbones": [r.to_dict() for r in self.results]}
        if self.random_weights:
            out["warning"] = RANDOM_WEIGHTS_NOTE
        return out


def iter_diagnose(backbones: Sequence, images, *, names: Sequence[str] | None = None,
             channel_axis: int | None = None, max_side: int | None = None, layers: str = "all",
             per_channel: bool = True, repeats: int = 3, train_fraction: float = 1 / 36,
             alpha: float | str = 1.0, seed: int = 0, rel_threshold: float = 3.0,
             directions: str | None = "auto", pca_shared: bool = True, random_weights: bool = False,
             device="cpu", weights: dict | None = None, intensity: str = "reference"):
    """Positional probe, token norms / defects and PCA-RGB for several backbones (a job generator).

    Parameters
    ----------
    backbones : sequence of str or ViTBackbone
        Names are built with :func:`~._common.make_backbone` one at a time (and released
        after use); names that cannot be built (missing weights) are recorded in
        :attr:`DiagnosticsResult.missing` instead of failing the whole run.
    images : array_like or sequence of array_like
        2-D images (Y, X) or (Y, X, 3), cropped (never padded) to whole patches.
    names : sequence of str, optional
        Labels of the images.
    channel_axis, max_side :
        See :func:`~._common.prepare_image`.
    layers : {'all', 'final'}
        Probe every block plus the final features (the fingerprint), or the final features only.
    per_channel, repeats, train_fraction, alpha, seed :
        See :func:`~.positional.iter_positional_probe`.
    rel_threshold : float
        High-norm flag threshold (x layer median).
    directions : 'auto' or None
        Compute SINDER defect directions when available, or skip the angle maps.
    pca_shared : bool
        One PCA basis across the images of a backbone.
    random_weights : bool
        Build named backbones with random weights (LayerScale 1, torch seed ``seed``): tests and
        method checks only.
    device : str or torch.device
    weights : dict of str -> path, optional
        Explicit checkpoint per backbone name.
    intensity : {'reference', 'percentile'}
        How image values are scaled before the ViT, as ``FeatureConfig.intensity`` of the
        segmentation features (see :func:`~._common.prepare_image`); pass a classifier's
        value to see the features it was trained on.

    Yields
    ------
    Progress

    Returns
    -------
    DiagnosticsResult

    Raises
    ------
    VitsegError
        Bad arguments, unusable images, or no backbone could be built (the message lists why).

    References
    ----------
    Pawlowsky et al., "What DINO saw", arXiv 2603.16840 (2026); Darcet et al., ICLR 2024,
    arXiv 2309.16588; Wang, Zhang, Salzmann, ECCV 2024, arXiv 2407.16826.
    """
    if layers not in ("final", "all"):
        raise VitsegError(f"layers must be 'final' or 'all'; got {layers!r}.")
    if isinstance(backbones, str) or not isinstance(backbones, Sequence):
        backbones = [backbones]
    if not backbones:
        raise VitsegError("no backbone given; choose at least one.")
    sizes = [_patch_size_of(b) if isinstance(b, str) else b.patch_size for b in backbones]  # validates names
    prepared: dict[int, list[PreparedImage]] = {}
    psize = sizes[0]
    prepared[psize] = _prepare_all(images, names, channel_axis, psize, max_side, intensity)
    n_img = len(prepared[psize])
    per_bb = 2 + 2 * n_img
    total = per_bb * len(backbones)
    results, missing = [], {}
    for bi, spec in enumerate(backbones):
        step0 = bi * per_bb
        label = spec if isinstance(spec, str) else spec.name
        yield Progress(step0, total, f"building {label}")
        if isinstance(spec, str):
            try:
                bb = make_backbone(spec, random_weights=random_weights, device=device,
                                   weights=(weights or {}).get(spec), seed=seed)
            except VitsegError as e:  # WeightsNotFoundError is a VitsegError
                missing[spec] = str(e)
                continue
        else:
            bb = spec
        p = bb.patch_size
        if p not in prepared:
            prepared[p] = _prepare_all(images, names, channel_axis, p, max_side, intensity)
        imgs = prepared[p]
        dirs = None
        if directions == "auto":
            yield Progress(step0 + 1, total, f"{bb.name}: defect directions")
            dirs = defect_directions_or_none(bb)
        elif directions is not None:
            raise VitsegError(f"directions must be 'auto' or None; got {directions!r}.")
        rng = np.random.default_rng(seed)  # the same splits and noise targets for every backbone
        probes, analyses, finals = [], [], []
        for ii, im in enumerate(imgs):
            yield Progress(step0 + 2 + 2 * ii, total, f"{bb.name}: features of {im.name}")
            tok = extract_tokens(bb, im)
            yield Progress(step0 + 3 + 2 * ii, total, f"{bb.name}: probe and norms on {im.name}")
            probes.append(probe_token_maps(select_maps(tok, layers), repeats=repeats,
                                           train_fraction=train_fraction, alpha=alpha,
                                           per_channel=per_channel, rng=rng))
            analyses.append(analyse_tokens(tok, rel_threshold=rel_threshold, directions=dirs))
            finals.append(tok.final.permute(1, 2, 0).numpy())
            del tok
        infos = [image_info(im) for im in imgs]
        settings = {"train_fraction": train_fraction, "alpha": alpha, "repeats": repeats, "seed": seed,
                    "scoring": "R² on held-out tokens",
                    "lr+ud": "mean of lr and ud R² on the same split",
                    "per_channel_alpha": 1.0 if isinstance(alpha, str) else float(alpha)}
        n_blocks = len(bb.model.blocks)
        probe: ProbeResult = probe_result_from(bb.name, bool(bb.pretrained), probes,
                                               layer_labels(n_blocks, layers), infos, settings)
        norms: NormResult = norm_result_from(bb.name, bool(bb.pretrained), n_blocks, analyses, infos,
                                             rel_threshold, dirs is not None)
        results.append(BackboneDiagnostics(bb.name, bool(bb.pretrained), bb.cfg.position, probe, norms,
                                           pca_rgb(finals, shared=pca_shared)))
        del finals
        if isinstance(spec, str):
            del bb
            gc.collect()
    yield Progress(total, total, "done")
    if not results:
        raise VitsegError("none of the requested backbones could be built:\n" +
                          "\n".join(f"  {k}: {v}" for k, v in missing.items()))
    settings = {"layers": layers, "per_channel": per_channel, "repeats": repeats,
                "train_fraction": train_fraction, "alpha": alpha, "seed": seed,
                "rel_threshold": rel_threshold, "pca_shared": pca_shared, "max_side": max_side,
                "random_weights": bool(random_weights), "intensity": intensity}
    return DiagnosticsResult(results, missing, prepared[psize], settings)


def _patch_size_of(name: str) -> int:
    from ..backbones import get_backbone_cfg

    return get_backbone_cfg(name).patch_size
