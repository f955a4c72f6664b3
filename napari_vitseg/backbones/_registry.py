"""Backbone registry: names -> frozen :class:`BackboneCfg` (timm's ``register_model`` pattern)."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from .._validation import VitsegError, VitsegWarning

__all__ = [
    "BackboneCfg",
    "PosEmbedInterp",
    "TIMM_POS_EMBED_INTERP",
    "register_backbone",
    "list_backbones",
    "get_backbone_cfg",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PosEmbedInterp:
    """How a learned position embedding is resampled to a token grid other than its own.

    The embedding of an ``M x M`` grid (37 x 37 for DINOv2) is resampled with
    ``torch.nn.functional.interpolate`` on the (1, D, M, M) patch part; prefix-token
    positions are kept. On the training grid itself nothing is interpolated.

    Attributes
    ----------
    mode : str
        ``interpolate``'s ``mode`` (``'bicubic'`` for every DINOv2 reference).
    antialias : bool
        ``interpolate``'s ``antialias``. Note that PyTorch's antialiased bicubic kernel
        (a = -0.5, as PIL) differs from the plain one (a = -0.75) when upsampling too.
    offset : float
        ``0``: resample by output size, ``size=(gh, gw)`` (timm). ``> 0``: pass
        ``scale_factor=((gh + offset) / M, (gw + offset) / M)`` instead, which also sets the
        sampling positions (facebookresearch's "historical kludge", offset 0.1).

    Examples
    --------
    >>> PosEmbedInterp("bicubic", antialias=False, offset=0.1)
    PosEmbedInterp(mode='bicubic', antialias=False, offset=0.1)
    """

    mode: str = "bicubic"
    antialias: bool = True
    offset: float = 0.0


#: timm's ``resample_abs_pos_embed`` defaults (bicubic, antialias, by output size); also what
#: the facebookresearch register models (``*_reg``) do.
TIMM_POS_EMBED_INTERP = PosEmbedInterp("bicubic", antialias=True, offset=0.0)


@dataclass(frozen=True)
class BackboneCfg:
    """Everything needed to build a backbone and find its weights.

    Attributes
    ----------
    name : str
        Name in the plugin (e.g. ``'dinov2_vits14_reg'``).
    timm_arch : str
        timm architecture id (e.g. ``'vit_small_patch14_reg4_dinov2'``).
    timm_tag : str or None
        timm pretrained tag (``'lvd142m'``); ``None`` when timm has no weights for it.
    embed_dim, depth, num_heads : int
        Transformer width, number of blocks and heads.
    num_prefix_tokens : int
        CLS + registers, in timm order ``[CLS, reg x4, patches]``.
    patch_size : int
        Patch side in pixels; input sides are padded to a multiple of it.
    position : {'learned', 'alibi', 'none'}
        Positional encoding: DINOv2's learned embedding, 2D ALiBi attention bias, or none (NoPE).
    pos_embed_interp : PosEmbedInterp or None
        How the reference implementation resamples the learned position embedding to
        another grid (see :class:`PosEmbedInterp`); ``None`` without a learned embedding.
        Used unless a feature config asks for timm's resampling (classifier files of
        releases up to 0.1.x, ``FeatureConfig.pos_embed_interp='timm'``).
    reference_code : str
        The reference code this entry reproduces (repository, path and commit), shown in
        ``docs/backbones.md``.
    weights_file : str
        Expected checkpoint file name (looked up in the weights folder / hub cache).
    weights_repo : str or None
        Hugging Face repo holding ``weights_file`` (for download and cache lookup).
    weights_url : str or None
        Human-readable source of the weights.
    sha256 : str or None
        SHA-256 of ``weights_file`` once known (checked on import / load).
    base : str or None
        For derived backbones (SINDER repair files), the base backbone name.
    mean, std : tuple of float
        Input normalisation (RGB in [0, 1]).
    license : str
        Licence of the weights.
    paper : str
        Reference for the method.
    description : str
        One line for menus and ``vitseg weights list``.
    heavy : bool
        More than 1 B parameters (ViT-g: 4.5 GB of float32 weights): slow to build and run,
        a GPU is advised. Front ends do not offer such a backbone with random weights (the
        diagnostics widget hides it when "random weights" is ticked).
    extra : dict
        Family-specific settings read by the family's own code (``'alibi'``: keyword
        arguments of :func:`~napari_vitseg.backbones.alibi_bias`; ``'hub_files'``: file
        names to try in ``weights_repo``; ``'full_checkpoint'``: a derived entry whose
        weights file is a whole model, not a repair file). Not compared or hashed.
    """

    name: str
    timm_arch: str
    timm_tag: str | None
    embed_dim: int
    depth: int
    num_heads: int
    num_prefix_tokens: int
    patch_size: int = 14
    position: str = "learned"
    pos_embed_interp: PosEmbedInterp | None = TIMM_POS_EMBED_INTERP
    reference_code: str = ""
    weights_file: str = ""
    weights_repo: str | None = None
    weights_url: str | None = None
    sha256: str | None = None
    base: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = "Apache-2.0"
    paper: str = ""
    description: str = ""
    heavy: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)


_REGISTRY: dict[str, BackboneCfg] = {}


def register_backbone(fn: Callable[[], BackboneCfg]) -> Callable[[], BackboneCfg]:
    """Register a backbone, keyed by the decorated function's name.

    The function takes no argument and returns the :class:`BackboneCfg`; its ``name``
    must equal the function name. Overwriting a name warns.
    """
    cfg = fn()
    if cfg.name != fn.__name__:
        raise ValueError(f"BackboneCfg.name {cfg.name!r} must equal the function name {fn.__name__!r}")
    if cfg.name in _REGISTRY:
        warnings.warn(f"Backbone {cfg.name!r} is registered twice; the later one wins.", VitsegWarning, stacklevel=2)
    _REGISTRY[cfg.name] = cfg
    return fn


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_backbone_cfg(name: str) -> BackboneCfg:
    """The :class:`BackboneCfg` of a registered backbone.

    Raises
    ------
    VitsegError
        For an unknown name, listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VitsegError(
            f"Unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}, or 'none' for classical features only."
        ) from None
