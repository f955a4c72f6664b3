"""Tiled ViT patch features of a 2D image, upsampled to the pixel grid.

Pipeline of :func:`vit_features` for one (Y, X) plane:

1. :func:`to_rgb01` - any real dtype, grey or RGB, to (Y, X, 3) float32 in [0, 1], by the
   dtype's range as the papers' code does (``intensity='reference'``) or by the plane's
   0.5 / 99.5 percentiles (``'percentile'``; see the function's Notes).
2. ImageNet normalisation with the backbone's ``cfg.mean`` / ``cfg.std`` and reflection
   padding of the bottom / right edges to a multiple of the patch size ``p``.
3. :func:`vit_patch_features` - the whole padded image in one forward pass when its
   attention fits ``budget_mib`` (``tiling='auto'``, :func:`whole_image_fits`), otherwise
   windows of ``tile_size`` pixels with ``tile_overlap``, run in batches through
   ``backbone.forward_features`` under ``torch.inference_mode()`` (bf16 autocast only if
   asked), blended in the token grid with linear ramps, giving
   (ceil(Y/p), ceil(X/p), D) float32 tokens, channels last: token ``(i, j)`` describes
   pixels ``[p*i, p*i + p) x [p*j, p*j + p)``.
4. Optionally a :class:`PCAReducer` projection of the tokens (exactly equivalent to
   projecting the upsampled features, because both upsamplers are linear and keep
   constants, but D / n_components times cheaper).
5. :func:`~napari_vitseg.features.upsample.upsample_bilinear` or
   :func:`~napari_vitseg.features.upsample.upsample_guided` to (Y, X, D) float32.

References
----------
.. [1] M. Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
       TMLR 2024, arXiv:2304.07193.
.. [2] T. Darcet, M. Oquab, J. Mairal, P. Bojanowski, "Vision Transformers Need
       Registers", ICLR 2024, arXiv:2309.16588.
.. [3] K. He, J. Sun, X. Tang, "Guided Image Filtering", IEEE TPAMI 35(6), 2013.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._validation import VitsegError, as_float32, check_channel_axis, check_option
from ..backbones._input import INTENSITY_MODES, PERCENTILES, robust_range, scale_intensity
from .config import TILING_MODES, VIT_BUDGET_MIB
from .upsample import upsample_bilinear, upsample_guided

__all__ = [
    "INTENSITY_MODES",
    "PERCENTILES",
    "PCAReducer",
    "TILING_MODES",
    "VIT_BUDGET_MIB",
    "attention_bytes",
    "robust_intensity_range",
    "to_rgb01",
    "vit_feature_names",
    "vit_features",
    "vit_patch_features",
    "whole_image_fits",
]

# -- input conversion ----------------------------------------------------------
def _as_yxc(image, channel_axis: int | None, name: str = "image") -> np.ndarray:
    """Validate a single plane and return it as (Y, X, C) float32 with C in {1, 3}."""
    arr = np.asarray(image)
    ax = check_channel_axis(arr.ndim, channel_axis, name)
    if ax is None:
        if arr.ndim == 3 and arr.shape[-1] in (1, 3):
            ax = 2  # (Y, X, 3) RGB or (Y, X, 1) grey
        elif arr.ndim == 2:
            arr = arr[..., None]
            ax = 2
    if ax is None or arr.ndim != 3:
        hint = ""
        if arr.ndim == 3 and ax is None:
            hint = (" For a multichannel plane pass channel_axis; for a (Z, Y, X) stack compute the "
                    "features plane by plane.")
        raise VitsegError(
            f"{name} has shape {tuple(arr.shape)}; ViT features take one 2D plane: (Y, X) grey, "
            f"(Y, X, 3) RGB, or (Y, X) plus a channel axis named by channel_axis.{hint}"
        )
    arr = np.moveaxis(arr, ax, -1)
    c = arr.shape[-1]
    if c not in (1, 3):
        raise VitsegError(
            f"{name} has {c} channels (axis {channel_axis if channel_axis is not None else -1}); ViT backbones "
            "take 1 (grey) or 3 (RGB) channels. Pick them first, for example image[..., [0]] for one "
            "channel or image[..., [0, 1, 2]] for three (with RGBA, drop the alpha channel)."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise VitsegError(f"{name} is empty (spatial shape {arr.shape[:2]}).")
    return as_float32(arr, name)


def _source_dtype(image, dtype):
    if dtype is not None:
        return np.dtype(dtype)
    dt = getattr(image, "dtype", None)
    return np.dtype(dt) if dt is not None else np.asarray(image).dtype


def robust_intensity_range(image, channel_axis: int | None = None, *,
                           percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """The intensity range that :func:`to_rgb01` maps to [0, 1] with ``intensity='percentile'``.

    Parameters
    ----------
    image : (Y, X) or (Y, X, 3) array, or a plane with a channel axis
        Any real dtype.
    channel_axis : int, optional
        Channel axis (1 or 3 channels).
    percentiles : (float, float)
        Lower and upper percentile, over all pixels and channels together.

    Returns
    -------
    (float, float)
        ``(lo, hi)`` with ``hi > lo`` whenever the image is not constant: the percentiles,
        or the minimum and maximum if the percentiles coincide (e.g. sparse binary images).

    Examples
    --------
    >>> import numpy as np
    >>> robust_intensity_range(np.arange(1001, dtype=np.uint16).reshape(7, 143))
    (5.0, 995.0)
    """
    arr = _as_yxc(image, channel_axis)
    return robust_range(arr, percentiles)


def to_rgb01(image, channel_axis: int | None = None, *,
             intensity_range: tuple[float, float] | None = None,
             intensity: str = "reference", dtype=None) -> np.ndarray:
    """Convert a grey or RGB plane of any real dtype to the RGB float32 a ViT is fed.

    Parameters
    ----------
    image : (Y, X), (Y, X, 1) or (Y, X, 3) array
        Any real dtype (bool, integers, floats). A (Y, X, 3) array without
        ``channel_axis`` is read as RGB, (Y, X, 1) as grey. Other layouts, such as
        (C, Y, X), need ``channel_axis``.
    channel_axis : int, optional
        The axis holding 1 or 3 channels, e.g. 0 for (C, Y, X).
    intensity_range : (float, float), optional
        ``(lo, hi)`` mapped to (0, 1) and clipped, in either ``intensity`` mode, for
        example from :func:`robust_intensity_range` on a whole stack or a whole plane, so
        that tiles or planes processed separately get the same scaling.
    intensity : {'reference', 'percentile'}
        ``'reference'`` (default, as the DINOv2 / dino-saw / SINDER code reads images):
        uint8 / 255, other integers divided by their dtype's maximum (uint16: 65535),
        bool as 0 / 1, floats as given (not clipped). ``'percentile'``: this image's 0.5 /
        99.5 percentiles (all channels together) to 0 / 1, clipped (classifier files of
        releases up to 0.1.x). The rule itself is
        :func:`napari_vitseg.backbones._input.scale_intensity`, shared with the SINDER
        repair and the diagnostics.
    dtype : numpy dtype, optional
        The dtype the image had before it was converted to float (``'reference'`` scales
        by it); default the dtype of ``image``.

    Returns
    -------
    (Y, X, 3) ndarray of float32
        A grey image is repeated to three channels. Values in [0, 1] except for float
        input with ``intensity='reference'``, which is passed through.

    Raises
    ------
    VitsegError
        For more than one plane, 2 or more than 3 channels, unsupported dtypes,
        non-finite values or an unknown ``intensity``.

    Notes
    -----
    ``'percentile'`` makes the features insensitive to gain and offset between images; the
    price is that the scaling depends on the content (a nearly empty plane is stretched)
    and differs from the papers' (features of a uint8 image spanning 40-180 change by
    ~65 %). ``'reference'`` gives every image of a dtype the same scaling, as the
    checkpoints were trained; data that fill only part of their dtype's range (12-bit
    camera data in uint16) then reach the ViT dark and flat: use ``'percentile'`` or an
    ``intensity_range`` for those. ``docs/backbones.md`` argues the default.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    >>> rgb = to_rgb01(img)
    >>> rgb.shape, rgb.dtype, rgb[..., 0].tolist()
    ((2, 2, 3), dtype('float32'), [[0.0, 0.20000000298023224], [0.800000011920929, 1.0]])
    >>> float(to_rgb01(img // 2, intensity="percentile").max())
    1.0
    """
    src = _source_dtype(image, dtype)
    arr = _as_yxc(image, channel_axis)
    return _scale01(arr, intensity_range, intensity, src)


def _scale01(arr: np.ndarray, intensity_range, intensity: str = "percentile", dtype=None) -> np.ndarray:
    out = scale_intensity(arr, intensity=intensity, dtype=dtype, intensity_range=intensity_range)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


# -- tiling ----------------------------------------------------------------------
def _tile_starts(n: int, t: int, stride: int) -> list[int]:
    """Start indices of windows of length ``t`` covering ``[0, n)``; the last one ends at ``n``."""
    if n <= t:
        return [0]
    starts = list(range(0, n - t, stride))
    starts.append(n - t)
    return starts


def _ramp(n: int, left: int, right: int) -> np.ndarray:
    """Blending weights of a window of ``n`` tokens that overlaps its neighbours by
    ``left`` / ``right`` tokens (0 at an image border): linear from 1/(ov+1) up to 1.

    Two windows overlapping by ``ov`` tokens get weights that sum to exactly 1 there.
    """
    w = np.ones(n, np.float64)
    if left > 0:
        w[:left] = np.minimum(w[:left], np.arange(1, left + 1) / (left + 1))
    if right > 0:
        w[n - right:] = np.minimum(w[n - right:], np.arange(right, 0, -1) / (right + 1))
    return w


def _axis_weights(starts: list[int], t: int) -> list[np.ndarray]:
    out = []
    for k, s in enumerate(starts):
        left = max(0, starts[k - 1] + t - s) if k > 0 else 0
        right = max(0, s + t - starts[k + 1]) if k + 1 < len(starts) else 0
        out.append(_ramp(t, min(left, t), min(right, t)))
    return out


def _tile_layout(gh: int, gw: int, tile_tokens: int, overlap_tokens: int):
    """Tiles of the (gh, gw) token grid: ``[(y0, x0, th, tw, weight (th, tw) float32), ...]``."""
    th, tw = min(tile_tokens, gh), min(tile_tokens, gw)
    stride = max(1, tile_tokens - overlap_tokens)
    ys, xs = _tile_starts(gh, th, stride), _tile_starts(gw, tw, stride)
    wys, wxs = _axis_weights(ys, th), _axis_weights(xs, tw)
    return [(y0, x0, th, tw, np.outer(wy, wx).astype(np.float32))
            for y0, wy in zip(ys, wys, strict=True) for x0, wx in zip(xs, wxs, strict=True)]


def attention_bytes(n_tokens: int, num_heads: int, *, bias: bool = False) -> int:
    """Bytes of the attention matrices of one window in one block: the memory that grows as
    tokens**2.

    Parameters
    ----------
    n_tokens : int
        Tokens of the window, prefix tokens (CLS, registers) included.
    num_heads : int
        Attention heads.
    bias : bool
        The model adds an attention bias (2D ALiBi): one more (H, N, N) float32 matrix.

    Returns
    -------
    int
        ``4 * num_heads * n_tokens**2 * (2 + bias)``: float32 scores and softmax
        probabilities, as an unfused attention holds them at once, plus the bias. This is
        an upper bound on the devices we measured: PyTorch's fused attention (used by timm
        when there is no bias) keeps O(N) memory - a random ViT-S on 1036 x 1036 px (5476
        tokens) grew the CPU peak RSS by 173 MiB against the 1373 MiB this returns - and
        the ALiBi ViT-S by 1373 MiB against 2059 MiB.

    Examples
    --------
    >>> round(attention_bytes(1374, 6) / 2**20, 1)  # a 518 x 518-px window of ViT-S with 4 registers
    86.4
    """
    n, h = int(n_tokens), int(num_heads)
    return 4 * h * n * n * (3 if bias else 2)


def _attention_shape(backbone) -> tuple[int, int, int, bool]:
    """(patch size, heads, prefix tokens, bias) of a backbone or a BackboneCfg (duck-typed
    stand-ins without ``num_heads`` count as one head without prefix tokens)."""
    cfg = getattr(backbone, "cfg", backbone)
    p = int(getattr(backbone, "patch_size", getattr(cfg, "patch_size", 14)))
    heads = int(getattr(cfg, "num_heads", 1))
    prefix = int(getattr(cfg, "num_prefix_tokens", 0))
    return p, heads, prefix, getattr(cfg, "position", "learned") == "alibi"


def _check_budget(budget_mib) -> float:
    if isinstance(budget_mib, bool) or not isinstance(budget_mib, (int, float, np.integer, np.floating)) \
            or not 1 <= budget_mib <= 2**30:
        raise VitsegError(f"budget_mib must be a number of MiB in [1, 2**30]; got {budget_mib!r}.")
    return float(budget_mib)


def whole_image_fits(shape, backbone, *, budget_mib: float = VIT_BUDGET_MIB) -> bool:
    """Whether ``tiling='auto'`` runs an image of this shape whole (one forward pass).

    Parameters
    ----------
    shape : (int, int)
        Image height and width in pixels (Y, X).
    backbone : ViTBackbone or BackboneCfg
        Supplies the patch size, the number of heads and prefix tokens, and whether the
        attention carries a bias (ALiBi).
    budget_mib : float
        Memory budget for the attention of one block, in MiB (``FeatureConfig.vit_budget_mib``).

    Returns
    -------
    bool
        ``attention_bytes(gh * gw + prefix, heads, bias) <= budget_mib * 2**20`` with
        ``gh, gw = ceil(Y / p), ceil(X / p)`` (:func:`attention_bytes`). The rule depends
        only on the image shape and the backbone's configuration, never on the device or
        its free memory, so a classifier computes the same features everywhere.

    Raises
    ------
    VitsegError
        A ``budget_mib`` outside [1, 2**30].

    Notes
    -----
    With the default 2048 MiB: ViT-S (6 heads) runs up to 6,688 tokens whole (about
    1,134 x 1,134 px; 1024 x 1024 px is 5,476), ALiBi ViT-S up to 5,461 (1,022 x 1,022 px),
    ViT-B (12 heads) up to 4,729 (952 x 952 px), ViT-g (24 heads) up to 3,344 (798 x 798 px).

    Examples
    --------
    >>> from napari_vitseg.backbones import get_backbone_cfg
    >>> whole_image_fits((1024, 1024), get_backbone_cfg("dinov2_vits14_reg"))
    True
    >>> whole_image_fits((1024, 1024), get_backbone_cfg("dinov2_vitg14"))
    False
    """
    budget = _check_budget(budget_mib)
    p, heads, prefix, bias = _attention_shape(backbone)
    gh, gw = -(-int(shape[0]) // p), -(-int(shape[1]) // p)
    return attention_bytes(gh * gw + prefix, heads, bias=bias) <= budget * 2**20


def _backbone_device(backbone) -> torch.device:
    try:
        return next(backbone.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _resolve_device(backbone, device) -> torch.device:
    bdev = _backbone_device(backbone)
    if device is None:
        return bdev
    dev = torch.device(device)
    if dev.type != bdev.type or (dev.index is not None and bdev.index is not None and dev.index != bdev.index):
        raise VitsegError(
            f"The backbone is on {bdev} but device={str(device)!r} was requested; create it with "
            f"create_backbone(name, device={str(device)!r}) or move it with backbone.to({str(device)!r})."
        )
    return bdev


def _check_tiling(tile_size, tile_overlap, batch_size, p: int) -> tuple[int, int, int]:
    if int(tile_size) != tile_size or tile_size < p:
        raise VitsegError(f"tile_size must be an integer >= the patch size ({p} px); got {tile_size!r}.")
    if int(tile_overlap) != tile_overlap or not 0 <= tile_overlap < tile_size:
        raise VitsegError(f"tile_overlap must be an integer with 0 <= tile_overlap < tile_size; got {tile_overlap!r}.")
    if int(batch_size) != batch_size or batch_size < 1:
        raise VitsegError(f"batch_size must be a positive integer; got {batch_size!r}.")
    t = int(tile_size) // p
    o = min(int(round(tile_overlap / p)), t - 1)
    return t, o, int(batch_size)


def _patch_features_rgb01(rgb: np.ndarray, backbone, *, tile_size, tile_overlap, batch_size,
                          device, autocast, progress, pos_embed_interp=None, tiling="always",
                          budget_mib=VIT_BUDGET_MIB) -> np.ndarray:
    """Tokens (gh, gw, D) float32, C-contiguous, of an RGB [0, 1] (Y, X, 3) float32 plane."""
    p = int(backbone.patch_size)
    t_tok, o_tok, batch_size = _check_tiling(tile_size, tile_overlap, batch_size, p)
    check_option(tiling, TILING_MODES, "tiling")
    whole = tiling == "auto" and whole_image_fits(rgb.shape[:2], backbone, budget_mib=budget_mib)
    dev = _resolve_device(backbone, device)
    if autocast is None:
        autocast = dev.type == "cuda"

    y, x = rgb.shape[:2]
    gh, gw = -(-y // p), -(-x // p)
    mean = np.asarray(backbone.cfg.mean, np.float32)
    std = np.asarray(backbone.cfg.std, np.float32)
    norm = (rgb - mean) / std
    norm = np.pad(norm, ((0, gh * p - y), (0, gw * p - x), (0, 0)), mode="reflect")
    img = torch.from_numpy(np.ascontiguousarray(norm.transpose(2, 0, 1)))  # (3, Yp, Xp)
    del norm

    tiles = _tile_layout(gh, gw, max(gh, gw), 0) if whole else _tile_layout(gh, gw, t_tok, o_tok)
    d = int(backbone.embed_dim)
    acc = np.zeros((gh, gw, d), np.float32)  # channels last
    wsum = np.zeros((gh, gw), np.float32)
    total = len(tiles)
    if progress is not None:
        progress(0, total)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(autocast)):
        for b0 in range(0, total, batch_size):
            batch = tiles[b0:b0 + batch_size]
            xb = torch.stack([img[:, y0 * p:(y0 + th) * p, x0 * p:(x0 + tw) * p]
                              for y0, x0, th, tw, _ in batch])
            xb = xb.to(dev, non_blocking=True)
            # 'reference' is forward_features' default: only 'timm' needs saying (so that
            # stand-in backbones without the keyword work)
            feats = (backbone.forward_features(xb) if pos_embed_interp in (None, "reference")
                     else backbone.forward_features(xb, pos_embed_interp=pos_embed_interp))
            feats = feats.float().cpu().numpy()
            if feats.shape[1:] != (d, batch[0][2], batch[0][3]):
                raise RuntimeError(
                    f"backbone.forward_features returned {feats.shape[1:]}, expected {(d, batch[0][2], batch[0][3])}"
                )
            for f, (y0, x0, th, tw, w) in zip(feats, batch, strict=True):
                acc[y0:y0 + th, x0:x0 + tw] += f.transpose(1, 2, 0) * w[..., None]  # (D, th, tw) -> (th, tw, D)
                wsum[y0:y0 + th, x0:x0 + tw] += w
            if progress is not None:
                progress(min(b0 + batch_size, total), total)
    acc /= wsum[..., None]
    return acc


def _token_rows(tokens: np.ndarray) -> np.ndarray:
    """(gh, gw, D) tokens as (gh * gw, D) rows stored column-major (a copy of the token size).

    The operand layout in which tokens always reached :class:`PCAReducer` (up to 0.1.x, a
    transposed view of channels-first tokens). BLAS may round a small product differently
    when an operand is stored the other way, so fitting and projecting tokens in this layout
    keeps PCA-reduced features bit-identical to earlier releases.
    """
    return np.asfortranarray(tokens.reshape(-1, tokens.shape[-1]))


def _project_tokens(pca: PCAReducer, tokens: np.ndarray) -> np.ndarray:
    """(gh, gw, D) tokens -> (gh, gw, n_components) float32 C-contiguous, via :func:`_token_rows`."""
    if tokens.ndim != 3:
        raise VitsegError(f"tokens must be (gh, gw, D); got shape {tokens.shape}.")
    return pca.transform(_token_rows(tokens)).reshape(tokens.shape[:2] + (-1,))


def vit_patch_features(image, backbone, *, tile_size: int = 518, tile_overlap: int = 112,
                       batch_size: int = 4, channel_axis: int | None = None, device=None,
                       autocast: bool | None = None,
                       progress: Callable[[int, int], object] | None = None,
                       intensity_range: tuple[float, float] | None = None,
                       intensity: str = "reference", dtype=None,
                       pos_embed_interp: str | None = None, tiling: str = "auto",
                       budget_mib: float = VIT_BUDGET_MIB) -> np.ndarray:
    """ViT patch features (tokens) of one plane: the whole image at once, or tile by tile.

    Parameters
    ----------
    image : (Y, X) or (Y, X, 3) array
        One plane, any real dtype; or a plane with a 1- or 3-channel axis named by
        ``channel_axis``. Converted with :func:`to_rgb01`.
    backbone : ViTBackbone
        From :func:`napari_vitseg.backbones.create_backbone` (anything with
        ``forward_features``, ``patch_size``, ``embed_dim`` and ``cfg.mean`` / ``cfg.std``).
    tile_size : int
        Window side in pixels when tiling, rounded down to a multiple of the patch size
        ``p`` and clipped to the padded image. The default 518 = 37 x 14 is DINOv2's
        training size, where its position embedding needs no interpolation.
    tile_overlap : int
        Overlap of neighbouring windows in pixels, rounded to a multiple of ``p``.
    batch_size : int
        Windows per forward pass.
    tiling : {'auto', 'always'}
        ``'auto'`` (default, as the references run images): the whole padded image in one
        forward pass when :func:`whole_image_fits` says its attention fits ``budget_mib``,
        windows of ``tile_size`` only above it. ``'always'``: windows of ``tile_size``
        (classifier files of feature-config versions 1 and 2); an image that fits in one
        window is still run whole.
    budget_mib : float
        Memory budget of whole-image inference in MiB (see :func:`whole_image_fits`).
    channel_axis : int, optional
        Channel axis of ``image``.
    device : str or torch.device, optional
        Where to run; must be the backbone's device (default: the backbone's device).
    autocast : bool, optional
        bf16 autocast; ``None`` means on for CUDA, off otherwise.
    progress : callable, optional
        Called as ``progress(done_tiles, total_tiles)`` before the first batch and after
        each batch. It may raise (e.g. :class:`napari_vitseg._progress.Cancelled`) to abort.
    intensity_range : (float, float), optional
        Fixed intensity scaling (see :func:`to_rgb01`).
    intensity : {'reference', 'percentile'}
        Intensity rule (see :func:`to_rgb01`).
    dtype : numpy dtype, optional
        The image's dtype before any conversion to float (see :func:`to_rgb01`).
    pos_embed_interp : {'reference', 'timm'}, optional
        Resampling of a learned position embedding for windows that are not 37 x 37
        tokens (see :meth:`~napari_vitseg.backbones.ViTBackbone.forward_features`);
        default ``'reference'``.

    Returns
    -------
    (gh, gw, D) ndarray of float32
        Channels last and C-contiguous, as the upsamplers of
        :mod:`~napari_vitseg.features.upsample` and :meth:`PCAReducer.transform` take them
        (``backbone.forward_features`` itself returns channels first, (B, D, h, w)).
        ``gh = ceil(Y / p)``, ``gw = ceil(X / p)``; token ``(i, j)``, i.e. ``tokens[i, j]``,
        describes the pixels ``[p*i, p*i + p) x [p*j, p*j + p)`` of the image,
        reflection-padded at the bottom and right edges.

    Raises
    ------
    VitsegError
        Bad image (see :func:`to_rgb01`), bad tiling parameters, or a ``device`` that is
        not the backbone's.

    Notes
    -----
    Whole image: the image is reflection-padded at the bottom and right to the next
    multiple of ``p`` (not resized to the lower multiple as dino-saw does, nor cropped as
    SINDER does), so that every pixel has a token at its native scale; the result is then
    exactly ``backbone.forward_features`` of the padded image. Tiles: windows start every ``tile_size - tile_overlap`` pixels and the last one is moved to
    end at the image edge. In the token grid, each window's output is weighted by a
    separable linear ramp that rises from ``1/(ov+1)`` at an edge shared with a neighbour
    (``ov`` = actual overlap in tokens) to 1, and stays 1 at image borders; overlapping
    outputs are averaged with these weights (two windows: weights sum to 1). An image
    that fits in one window gives exactly ``backbone.forward_features`` of the padded
    image, transposed to channels last. DINOv2's features depend on the position in the
    window (learned position embedding) and ALiBi's bias is normalised by the window's
    grid, so tiled and whole-image features differ (``docs/backbones.md``, Tiling); the
    ramps hide the seams.

    Memory: the normalised, padded image (3 x float32 per pixel), one batch of windows and
    the float32 (gh, gw, D) accumulator, i.e. about ``4 * D / p**2`` bytes per pixel.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_vitseg.backbones import create_backbone
    >>> bb = create_backbone("dinov2_vits14_reg", pretrained=False)  # random weights
    >>> tokens = vit_patch_features(np.zeros((30, 40), np.uint8), bb)  # 14 px patches
    >>> tokens.shape, tokens.dtype, tokens.flags.c_contiguous
    ((3, 3, 384), dtype('float32'), True)
    """
    rgb = to_rgb01(image, channel_axis, intensity_range=intensity_range, intensity=intensity, dtype=dtype)
    return _patch_features_rgb01(rgb, backbone, tile_size=tile_size, tile_overlap=tile_overlap,
                                 batch_size=batch_size, device=device, autocast=autocast,
                                 progress=progress, pos_embed_interp=pos_embed_interp, tiling=tiling,
                                 budget_mib=budget_mib)


def vit_features(image, backbone, *, upsample: str = "guided", tile_size: int = 518,
                 tile_overlap: int = 112, batch_size: int = 4, guided_radius: int = 8,
                 guided_eps: float = 1e-3, channel_axis: int | None = None, device=None,
                 autocast: bool | None = None,
                 progress: Callable[[int, int], object] | None = None,
                 pca: PCAReducer | None = None,
                 intensity_range: tuple[float, float] | None = None,
                 intensity: str = "reference", dtype=None,
                 pos_embed_interp: str | None = None, tiling: str = "auto",
                 budget_mib: float = VIT_BUDGET_MIB) -> np.ndarray:
    """Per-pixel ViT features of one plane: patch features (whole or tiled), upsampled.

    Parameters
    ----------
    image : (Y, X) or (Y, X, 3) array
        One plane, any real dtype (see :func:`to_rgb01`).
    backbone : ViTBackbone
        From :func:`napari_vitseg.backbones.create_backbone`.
    upsample : {'bilinear', 'guided'}
        :func:`~napari_vitseg.features.upsample.upsample_bilinear`, or the guided filter
        (He et al. 2013) of that with the image as guide: the [0, 1]-scaled grey image, or
        the mean of the scaled RGB channels (as :class:`~napari_vitseg.features.stack.Featurizer`
        does; :func:`~napari_vitseg.features.upsample.upsample_guided` also takes a colour
        guide, at about 2.5x the cost).
    tile_size, tile_overlap, batch_size, tiling, budget_mib, channel_axis, device, autocast, progress
        As in :func:`vit_patch_features`.
    guided_radius : int
        Guided-filter window radius in pixels.
    guided_eps : float
        Guided-filter regularisation for the guide in [0, 1].
    pca : PCAReducer, optional
        A fitted reducer applied to the tokens before upsampling. The result equals
        projecting the upsampled features (both upsamplers are linear and keep constants),
        at a fraction of the time and memory.
    intensity_range : (float, float), optional
        Fixed intensity scaling (see :func:`to_rgb01`).
    intensity, dtype, pos_embed_interp
        As in :func:`vit_patch_features`. The guide of ``upsample='guided'`` is always
        scaled with ``intensity='percentile'`` (or ``intensity_range``): its ``eps`` is
        set for a guide that spans [0, 1].

    Returns
    -------
    (Y, X, D) ndarray of float32
        Channels last; D is ``backbone.embed_dim`` or ``pca.n_components``. Names:
        :func:`vit_feature_names`.

    Raises
    ------
    VitsegError
        See :func:`vit_patch_features`; also for an unknown ``upsample`` or a ``pca``
        fitted on another number of channels.

    Notes
    -----
    The output dominates memory: ``4 * D`` bytes per pixel (1.6 GB for 384 channels at
    1024 x 1024), plus a few (Y, X, 4) float32 work arrays. Pass ``pca`` to bound it.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_vitseg.backbones import create_backbone
    >>> bb = create_backbone("dinov2_vits14_reg", pretrained=False)  # random weights
    >>> vit_features(np.zeros((30, 40), np.uint8), bb, upsample="bilinear").shape
    (30, 40, 384)
    """
    check_option(upsample, ("bilinear", "guided"), "upsample")
    if pca is not None and not isinstance(pca, PCAReducer):
        raise VitsegError(f"pca must be a fitted PCAReducer or None; got {type(pca).__name__}.")
    src = _source_dtype(image, dtype)
    arr = _as_yxc(image, channel_axis)
    grey = arr.shape[-1] == 1
    rgb = _scale01(arr, intensity_range, intensity, src)
    guide_rgb = rgb if intensity == "percentile" or intensity_range is not None else None
    if upsample == "guided" and guide_rgb is None:
        guide_rgb = _scale01(arr, None, "percentile")
    del arr
    tokens = _patch_features_rgb01(rgb, backbone, tile_size=tile_size, tile_overlap=tile_overlap,
                                   batch_size=batch_size, device=device, autocast=autocast,
                                   progress=progress, pos_embed_interp=pos_embed_interp, tiling=tiling,
                                   budget_mib=budget_mib)  # (gh, gw, D)
    if pca is not None:
        tokens = _project_tokens(pca, tokens)
    p = int(backbone.patch_size)
    if upsample == "bilinear":
        return upsample_bilinear(tokens, rgb.shape[:2], patch_size=p)
    guide = guide_rgb[..., 0] if grey else guide_rgb.mean(axis=-1)
    return upsample_guided(tokens, guide, radius=guided_radius, eps=guided_eps, patch_size=p)


def vit_feature_names(backbone_name: str, n: int, *, pca: bool = False) -> list[str]:
    """Names of ``n`` ViT feature channels, in order.

    Parameters
    ----------
    backbone_name : str
        Registered backbone name.
    n : int
        Number of channels.
    pca : bool
        Name principal components (``_pc000``...) instead of raw channels.

    Returns
    -------
    list of str
        ``f"{backbone_name}_{i:03d}"`` (or ``_pc{i:03d}``); more digits when n > 1000.

    Examples
    --------
    >>> vit_feature_names("dinov2_vits14_reg", 384)[::383]
    ['dinov2_vits14_reg_000', 'dinov2_vits14_reg_383']
    >>> vit_feature_names("dinov2_vits14_reg", 2, pca=True)
    ['dinov2_vits14_reg_pc000', 'dinov2_vits14_reg_pc001']
    """
    n = int(n)
    if n < 0:
        raise VitsegError(f"n must be >= 0; got {n}.")
    width = max(3, len(str(n - 1)))
    tag = "pc" if pca else ""
    return [f"{backbone_name}_{tag}{i:0{width}d}" for i in range(n)]


# -- PCA ------------------------------------------------------------------------
class PCAReducer:
    """Principal-component projection of feature channels, JSON-serialisable.

    Parameters
    ----------
    n_components : int
        Number of components kept.
    max_samples : int
        Fit on at most this many rows (pixels or tokens), drawn uniformly without
        replacement with ``random_state``.
    random_state : int
        Seed of the subsample.

    Attributes
    ----------
    mean_ : (D,) ndarray of float64
    components_ : (n_components, D) ndarray of float64
        Unit-norm principal axes, by decreasing variance; each axis's largest-magnitude
        entry is positive (a deterministic sign).
    explained_variance_ : (n_components,) ndarray of float64
    explained_variance_ratio_ : (n_components,) ndarray of float64
    n_features_in_ : int
    n_samples_seen_ : int
        Rows used for the fit (after subsampling).

    Notes
    -----
    Fit on tokens (:func:`vit_patch_features`, (gh, gw, D)) of the training image and store
    :meth:`to_dict` with the classifier; pass the reducer to :func:`vit_features` as
    ``pca`` so that new images are projected the same way. Solved by an eigendecomposition
    of the float64 covariance (D x D).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    >>> pca = PCAReducer(3).fit(x)
    >>> pca.transform(x).shape
    (500, 3)
    >>> PCAReducer.from_dict(pca.to_dict()).transform(x[:2]).dtype
    dtype('float32')
    """

    def __init__(self, n_components: int, *, max_samples: int = 100_000, random_state: int = 0):
        self.n_components = n_components
        self.max_samples = max_samples
        self.random_state = random_state

    @staticmethod
    def _rows(features, name="features") -> np.ndarray:
        arr = as_float32(features, name)
        if arr.ndim < 2:
            raise VitsegError(f"{name} must have shape (N, D) or (..., D); got {arr.shape}.")
        return arr.reshape(-1, arr.shape[-1])

    def fit(self, features) -> PCAReducer:
        """Fit on (N, D) or (..., D) features; returns ``self``.

        Raises
        ------
        VitsegError
            Bad parameters, or ``n_components`` larger than ``min(N, D)``.
        """
        n_comp = self.n_components
        if isinstance(n_comp, bool) or int(n_comp) != n_comp or n_comp < 1:
            raise VitsegError(f"n_components must be a positive integer; got {n_comp!r}.")
        if int(self.max_samples) < 2:
            raise VitsegError(f"max_samples must be >= 2; got {self.max_samples!r}.")
        x = self._rows(features)
        n, d = x.shape
        if n_comp > min(n, d):
            raise VitsegError(
                f"n_components={n_comp} exceeds min(n_samples, n_features) = min({n}, {d}); "
                "choose fewer components."
            )
        if n > self.max_samples:
            idx = np.random.default_rng(self.random_state).choice(n, int(self.max_samples), replace=False)
            x = x[np.sort(idx)]
        x = x.astype(np.float64)
        mean = x.mean(axis=0)
        x -= mean
        cov = (x.T @ x) / max(1, x.shape[0] - 1)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(evals)[::-1][: int(n_comp)]
        comps = evecs[:, order].T
        signs = np.sign(comps[np.arange(comps.shape[0]), np.argmax(np.abs(comps), axis=1)])
        signs[signs == 0] = 1
        comps *= signs[:, None]
        total = float(np.clip(evals, 0, None).sum())
        self.mean_ = mean
        self.components_ = comps
        self.explained_variance_ = np.clip(evals[order], 0, None)
        self.explained_variance_ratio_ = self.explained_variance_ / total if total > 0 else np.zeros(int(n_comp))
        self.n_features_in_ = d
        self.n_samples_seen_ = int(x.shape[0])
        return self

    def _check_fitted(self):
        if not hasattr(self, "components_"):
            raise VitsegError("This PCAReducer is not fitted yet; call fit(features) first.")

    def transform(self, features) -> np.ndarray:
        """Project (..., D) features to (..., n_components) float32.

        Raises
        ------
        VitsegError
            Not fitted, or the last axis is not ``n_features_in_`` long.
        """
        self._check_fitted()
        arr = as_float32(features, "features")
        if arr.ndim < 1 or arr.shape[-1] != self.n_features_in_:
            raise VitsegError(
                f"features have {arr.shape[-1] if arr.ndim else 0} channels but this PCAReducer was fitted "
                f"on {self.n_features_in_}; use the backbone and settings it was fitted with."
            )
        w = self.components_.T.astype(np.float32)
        shift = (self.mean_ @ self.components_.T).astype(np.float32)
        out = arr.reshape(-1, arr.shape[-1]) @ w
        out -= shift
        return out.reshape(arr.shape[:-1] + (w.shape[1],))

    def to_dict(self) -> dict:
        """Plain-JSON dictionary (lists of floats) with parameters and fitted state."""
        self._check_fitted()
        return {
            "n_components": int(self.n_components),
            "max_samples": int(self.max_samples),
            "random_state": int(self.random_state),
            "mean": self.mean_.tolist(),
            "components": self.components_.tolist(),
            "explained_variance": self.explained_variance_.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "n_samples_seen": int(self.n_samples_seen_),
        }

    def to_arrays(self, prefix: str = "vit_pca_") -> dict[str, np.ndarray]:
        """Fitted state as numeric arrays (for an ``.npz`` without pickles).

        Keys: ``{prefix}mean``, ``{prefix}components``, ``{prefix}explained_variance``,
        ``{prefix}explained_variance_ratio`` (float64) and ``{prefix}params`` (int64:
        n_components, max_samples, random_state, n_features_in, n_samples_seen).
        """
        self._check_fitted()
        return {
            f"{prefix}mean": self.mean_.copy(),
            f"{prefix}components": self.components_.copy(),
            f"{prefix}explained_variance": self.explained_variance_.copy(),
            f"{prefix}explained_variance_ratio": self.explained_variance_ratio_.copy(),
            f"{prefix}params": np.array([self.n_components, self.max_samples, self.random_state,
                                         self.n_features_in_, self.n_samples_seen_], np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str = "vit_pca_") -> PCAReducer:
        """Inverse of :meth:`to_arrays` (other keys in ``arrays`` are ignored).

        Raises
        ------
        VitsegError
            Missing keys or inconsistent shapes.
        """
        try:
            n, ms, rs, nf, ns = (int(v) for v in np.asarray(arrays[f"{prefix}params"]).ravel())
            d = {"n_components": n, "max_samples": ms, "random_state": rs, "n_features_in": nf,
                 "n_samples_seen": ns}
            for k in ("mean", "components", "explained_variance", "explained_variance_ratio"):
                d[k] = np.asarray(arrays[f"{prefix}{k}"], np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise VitsegError(f"No valid PCA state in the stored arrays ({err!r}); re-save the classifier.") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> PCAReducer:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        VitsegError
            Missing keys or inconsistent shapes.
        """
        try:
            self = cls(int(d["n_components"]), max_samples=int(d["max_samples"]),
                       random_state=int(d["random_state"]))
            self.mean_ = np.asarray(d["mean"], np.float64)
            self.components_ = np.asarray(d["components"], np.float64)
            self.explained_variance_ = np.asarray(d["explained_variance"], np.float64)
            self.explained_variance_ratio_ = np.asarray(d["explained_variance_ratio"], np.float64)
            self.n_features_in_ = int(d["n_features_in"])
            self.n_samples_seen_ = int(d["n_samples_seen"])
        except (KeyError, TypeError, ValueError) as err:
            raise VitsegError(f"Not a valid PCAReducer dictionary ({err!r}); re-save the classifier.") from None
        if (self.components_.shape != (self.n_components, self.n_features_in_)
                or self.mean_.shape != (self.n_features_in_,)):
            raise VitsegError("Inconsistent PCAReducer dictionary (component / mean shapes); re-save the classifier.")
        return self

    def __repr__(self) -> str:
        return (f"PCAReducer(n_components={self.n_components}, max_samples={self.max_samples}, "
                f"random_state={self.random_state})")
