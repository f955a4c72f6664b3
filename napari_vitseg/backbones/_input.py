"""The intensity rule: how image values become the [0, 1] intensities a ViT is fed.

One implementation, used by the segmentation features
(:func:`napari_vitseg.features.vit.to_rgb01`), the SINDER repair
(:func:`napari_vitseg.backbones.sinder.prepare_images`, ``vitseg repair``) and the diagnostics
(:func:`napari_vitseg.diagnostics.prepare_image`). It lives here, at the bottom of the
package, because the repair (in ``backbones``) may not import ``features``.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import VitsegError, check_option

__all__ = ["INTENSITY_MODES", "PERCENTILES", "reference_intensity_range", "robust_range", "scale_intensity"]

#: ``'reference'``: as the papers' code (uint8 / 255, other integers by their dtype range,
#: floats as given); ``'percentile'``: the 0.5 / 99.5 percentiles of each image to 0 / 1.
INTENSITY_MODES = ("reference", "percentile")
#: Percentiles of the robust intensity range (``intensity='percentile'``).
PERCENTILES = (0.5, 99.5)


def reference_intensity_range(dtype) -> tuple[float, float] | None:
    """The ``(lo, hi)`` that ``intensity='reference'`` maps to (0, 1) for a dtype.

    Parameters
    ----------
    dtype : numpy dtype or type
        The dtype of the image as it was read (before any conversion to float).

    Returns
    -------
    (float, float) or None
        ``(0, 255)`` for uint8 (``torchvision.transforms.ToTensor`` on an 8-bit image, as
        the DINOv2, dino-saw and SINDER code read images), ``(0, iinfo.max)`` for other
        integers (uint16: 65535; negative values of signed integers clip to 0), ``(0, 1)``
        for bool; ``None`` for floats, which are used as given.

    Examples
    --------
    >>> reference_intensity_range(np.uint8), reference_intensity_range(np.uint16)
    ((0.0, 255.0), (0.0, 65535.0))
    >>> reference_intensity_range(np.float32) is None
    True
    """
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return 0.0, 1.0
    if np.issubdtype(dt, np.integer):
        return 0.0, float(np.iinfo(dt).max)
    return None


def robust_range(arr: np.ndarray, percentiles=PERCENTILES) -> tuple[float, float]:
    """``(lo, hi)`` percentiles of all values (channels together); min / max if they coincide."""
    lo, hi = (float(v) for v in np.percentile(arr, percentiles))
    if not hi > lo:
        lo, hi = float(arr.min()), float(arr.max())
    return lo, hi


def scale_intensity(arr: np.ndarray, *, intensity: str = "reference", dtype=None,
                    intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Scale an image to the [0, 1] intensities a ViT expects (before mean / std).

    Parameters
    ----------
    arr : ndarray of float32, any shape
        The image values (already converted to float32; ``dtype`` says what they were).
    intensity : {'reference', 'percentile'}
        ``'reference'``: divide by the dtype's range (:func:`reference_intensity_range`;
        floats unchanged); ``'percentile'``: ``clip((x - lo) / (hi - lo), 0, 1)`` with
        ``lo, hi`` the 0.5 / 99.5 percentiles of ``arr`` (:func:`robust_range`); a
        constant image gives 0.
    dtype : numpy dtype, optional
        The image's dtype before conversion; default ``arr.dtype``.
    intensity_range : (float, float), optional
        Explicit ``(lo, hi)`` mapped to (0, 1) and clipped, in either mode (for one scaling
        across tiles, planes or a stack).

    Returns
    -------
    ndarray of float32
        Same shape; a new array.

    Raises
    ------
    VitsegError
        Unknown ``intensity`` or an invalid ``intensity_range``.

    References
    ----------
    .. [1] ``torchvision.transforms.ToTensor`` (uint8 / 255), used by facebookresearch/dinov2,
       tldr-group/dino-saw and haoqiwang/sinder to read images.

    Examples
    --------
    >>> a = np.array([0, 51, 255], np.uint8)
    >>> scale_intensity(a.astype(np.float32), dtype=a.dtype).tolist()
    [0.0, 0.20000000298023224, 1.0]
    >>> ramp = np.arange(201, dtype=np.float32)  # percentiles 0.5 / 99.5 are 1 and 199
    >>> scale_intensity(ramp, intensity="percentile")[[0, 100, 200]].tolist()
    [0.0, 0.5, 1.0]
    """
    check_option(intensity, INTENSITY_MODES, "intensity")
    if intensity_range is not None:
        try:
            lo, hi = (float(v) for v in intensity_range)
        except (TypeError, ValueError):
            raise VitsegError(f"intensity_range must be two numbers (lo, hi); got {intensity_range!r}.") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise VitsegError(f"intensity_range must be finite with hi > lo; got {intensity_range!r}.")
    elif intensity == "percentile":
        lo, hi = robust_range(arr)
    else:
        ref = reference_intensity_range(arr.dtype if dtype is None else dtype)
        if ref is None:
            return np.array(arr, dtype=np.float32, copy=True)
        # a division, as ToTensor's img.float().div(255): bit-identical to the reference
        out = np.divide(arr, np.float32(ref[1]), dtype=np.float32)
        np.clip(out, 0.0, 1.0, out=out)
        return out
    if hi > lo:
        out = arr - np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
        np.clip(out, 0.0, 1.0, out=out)
    else:
        out = np.zeros_like(arr, dtype=np.float32)
    return out
