"""Shared helpers of the diagnostics: image preparation, one forward pass per image, backbones.

The diagnostics look at what a backbone does to *one* 2-D image at native resolution, so the
image is cropped (never padded: padding would add structure the probe could pick up) to a
multiple of the patch size, and every block's patch tokens come from a single forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import VitsegError, as_float32, check_channel_axis

__all__ = [
    "PreparedImage",
    "TokenMaps",
    "prepare_image",
    "image_to_tensor",
    "extract_tokens",
    "make_backbone",
    "layer_extent",
]


@dataclass(frozen=True)
class PreparedImage:
    """A 2-D image ready for a ViT: RGB in [0, 1], cropped to whole patches.

    Attributes
    ----------
    rgb : (H, W, 3) ndarray of float32
        The cropped image in [0, 1]; H and W are multiples of the patch size.
    offset : tuple of int
        (row, column) of the crop's top-left pixel in the original image.
    source_shape : tuple of int
        Spatial shape (Y, X) of the original image.
    patch_size : int
        Patch side in pixels.
    name : str
        A label for reports (file or layer name).
    """

    rgb: np.ndarray
    offset: tuple[int, int]
    source_shape: tuple[int, int]
    patch_size: int
    name: str = "image"

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (gh, gw) = (H / patch, W / patch)."""
        return self.rgb.shape[0] // self.patch_size, self.rgb.shape[1] // self.patch_size


@dataclass
class TokenMaps:
    """Patch tokens of every block of one image (prefix tokens dropped).

    Attributes
    ----------
    blocks : (L, D, gh, gw) torch.Tensor of float32
        Output of each of the L blocks *before* the final LayerNorm (the raw residual stream).
    final : (D, gh, gw) torch.Tensor of float32
        The final patch features (last block followed by the final LayerNorm), as
        :meth:`~napari_vitseg.backbones.ViTBackbone.forward_features` returns them.
    """

    blocks: torch.Tensor
    final: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.final.shape[-2:])


def prepare_image(image, *, channel_axis: int | None = None, patch_size: int = 14,
                  max_side: int | None = None, name: str = "image",
                  intensity: str = "reference") -> PreparedImage:
    """Turn a 2-D image into RGB in [0, 1], cropped to a multiple of the patch size.

    Parameters
    ----------
    image : (Y, X) or (Y, X, C) array_like
        Greyscale, or with a channel axis holding 1, 3 (RGB) or 4 (RGBA, alpha dropped)
        channels. Any integer, bool or float dtype.
    channel_axis : int, optional
        The channel axis, if any (``-1`` for RGB).
    patch_size : int
        Crop H and W down to multiples of it (the top-left corner is kept; ``max_side``
        crops around the centre).
    max_side : int, optional
        Crop each side to at most this many pixels (around the centre) to bound the cost;
        ``None`` keeps the whole image.
    name : str
        Label used in reports and error messages.
    intensity : {'reference', 'percentile'}
        The intensity rule of the segmentation features
        (:func:`napari_vitseg.features.vit.to_rgb01`, ``FeatureConfig.intensity``):
        ``'reference'`` divides by the dtype's range (uint8 / 255; floats as given);
        ``'percentile'`` maps the 0.5 / 99.5 percentiles of the whole plane (not of the
        crop) to 0 and 1.

    Returns
    -------
    PreparedImage
        Intensities scaled as the segmentation features scale them.

    Raises
    ------
    VitsegError
        For a stack, a channel count other than 1, 3 or 4, non-finite values, or an image
        smaller than 2 x 2 patches.
    """
    arr = np.asarray(image)
    channel_axis = check_channel_axis(arr.ndim, channel_axis, name)
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, -1)
        n_ch = arr.shape[-1]
        if n_ch == 1:
            arr = arr[..., 0]
        elif n_ch == 4:
            arr = arr[..., :3]
        elif n_ch != 3:
            raise VitsegError(
                f"{name} has {n_ch} channels; the diagnostics need 1 (greyscale) or 3 (RGB) "
                "channels: select one or three channels first."
            )
    if not (arr.ndim == 2 or (arr.ndim == 3 and channel_axis is not None)):
        hint = ""
        if arr.ndim == 3 and channel_axis is None and arr.shape[-1] in (3, 4):
            hint = " It looks like an RGB image: pass channel_axis=-1 (CLI: --channel-axis -1)."
        raise VitsegError(
            f"{name} has shape {tuple(np.shape(image))}; the diagnostics take one 2-D plane "
            f"(Y, X) or (Y, X, 3). For a stack, pick a plane first.{hint}"
        )
    spatial = arr.shape[:2]
    p = int(patch_size)
    h, w = spatial
    if max_side is not None:
        h, w = min(h, int(max_side)), min(w, int(max_side))
    h, w = (h // p) * p, (w // p) * p
    if h < 2 * p or w < 2 * p:
        raise VitsegError(
            f"{name} is {spatial[0]} x {spatial[1]} pixels; the diagnostics need at least "
            f"{2 * p} x {2 * p} (2 x 2 patches of {p} px)"
            + (f" and max_side={max_side} must allow that." if max_side is not None else ".")
        )
    r0 = (spatial[0] - h) // 2 if max_side is not None and spatial[0] > max_side else 0
    c0 = (spatial[1] - w) // 2 if max_side is not None and spatial[1] > max_side else 0
    # the same intensity scaling as the segmentation features (features.vit.to_rgb01); with
    # 'percentile', the 0.5 / 99.5 percentiles of the whole plane rather than of the crop
    from ..features.vit import robust_intensity_range, to_rgb01

    src_dtype = arr.dtype
    plane = as_float32(arr, name)  # errors name the image
    rng = None
    if intensity == "percentile":
        lo, hi = robust_intensity_range(plane)
        rng = (lo, hi) if hi > lo else None
    crop = to_rgb01(plane[r0:r0 + h, c0:c0 + w], intensity_range=rng, intensity=intensity, dtype=src_dtype)
    return PreparedImage(np.ascontiguousarray(crop), (int(r0), int(c0)), (int(spatial[0]), int(spatial[1])),
                         p, name)


def image_to_tensor(prepared: PreparedImage, mean, std, device="cpu") -> torch.Tensor:
    """Normalise a :class:`PreparedImage` into a (1, 3, H, W) float32 tensor.

    Parameters
    ----------
    prepared : PreparedImage
    mean, std : sequence of 3 float
        Per-channel normalisation (the backbone's ``cfg.mean`` / ``cfg.std``).
    device : str or torch.device
    """
    x = torch.from_numpy(prepared.rgb).permute(2, 0, 1)[None]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(device)


@torch.inference_mode()
def extract_tokens(backbone, prepared: PreparedImage) -> TokenMaps:
    """Run one forward pass and return every block's patch tokens and the final features.

    Parameters
    ----------
    backbone : ViTBackbone
    prepared : PreparedImage
        Its patch size must equal the backbone's.

    Returns
    -------
    TokenMaps
        On the CPU, float32.
    """
    if prepared.patch_size != backbone.patch_size:
        raise VitsegError(
            f"{prepared.name} was cropped for {prepared.patch_size}-px patches but backbone "
            f"{backbone.name!r} uses {backbone.patch_size}-px patches; prepare it again."
        )
    x = image_to_tensor(prepared, backbone.cfg.mean, backbone.cfg.std, device=backbone.device)
    blocks = backbone.forward_blocks(x, norm=False)
    stack = torch.stack([b[0] for b in blocks]).float()
    norm = getattr(backbone.model, "norm", None)
    if norm is not None:
        final = norm(blocks[-1][0].permute(1, 2, 0)).permute(2, 0, 1)
    else:  # pragma: no cover - every timm ViT has a final norm
        final = backbone.forward_features(x)[0]
    return TokenMaps(stack.cpu(), final.float().cpu())


def make_backbone(name: str, *, random_weights: bool = False, device="cpu", weights=None, seed: int = 0):
    """Build a backbone for the diagnostics.

    Parameters
    ----------
    name : str
        A registered backbone name.
    random_weights : bool
        Random weights with LayerScale set to 1 (``init_values=1.0``), for tests and method
        checks only; the reports then say "RANDOM WEIGHTS".
    device : str or torch.device
    weights : str or pathlib.Path, optional
        Explicit checkpoint file.
    seed : int
        Torch seed of the random initialisation (``random_weights`` only; see the ``seed``
        of :func:`~napari_vitseg.backbones.create_backbone`), so that a random-weights
        report is reproducible; the global torch RNG is left untouched.

    Raises
    ------
    VitsegError
        Unknown name, or (a subclass) missing weights.
    """
    from ..backbones import create_backbone

    if random_weights:
        return create_backbone(name, pretrained=False, init_values=1.0, seed=seed, device=device)
    return create_backbone(name, pretrained=True, weights=weights, device=device)


def layer_extent(prepared: PreparedImage) -> dict:
    """``scale`` and ``translate`` that place a (gh, gw) token map on the image's pixels.

    napari puts the centre of data pixel k at ``k * scale + translate``; the image's pixel
    centres sit at integer coordinates, and token (i, j) covers pixels
    ``offset + p*i ... offset + p*i + p - 1``, whose centre is ``offset + p*i + (p - 1) / 2``.
    """
    p = prepared.patch_size
    half = (p - 1) / 2.0
    return {"scale": (float(p), float(p)),
            "translate": (prepared.offset[0] + half, prepared.offset[1] + half)}
