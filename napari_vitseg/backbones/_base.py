"""The :class:`ViTBackbone` wrapper: one object for every registered backbone.

It owns a timm ``VisionTransformer`` and hides what differs between backbones
(learned position embedding, 2D ALiBi attention bias, no position encoding), so that
feature extraction (:mod:`napari_vitseg.features.vit`), diagnostics and the SINDER repair
see the same three calls: :meth:`ViTBackbone.forward_features`,
:meth:`ViTBackbone.forward_blocks` and :meth:`ViTBackbone.attn_bias`.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
import torch.nn.functional as F

from .._validation import VitsegError
from ._registry import BackboneCfg, PosEmbedInterp

__all__ = ["ViTBackbone", "build_timm_model", "resample_pos_embed", "POS_EMBED_INTERP_MODES"]

#: Values of the ``pos_embed_interp`` argument of :meth:`ViTBackbone.forward_features` (and of
#: ``FeatureConfig.pos_embed_interp``): the registry entry's reference resampling, or timm's.
POS_EMBED_INTERP_MODES = ("reference", "timm")


def resample_pos_embed(pos_embed: torch.Tensor, old_size: tuple[int, int], new_size: tuple[int, int],
                       interp: PosEmbedInterp) -> torch.Tensor:
    """Resample the patch part of a learned position embedding to another token grid.

    Parameters
    ----------
    pos_embed : torch.Tensor, (1, M0 * M1, D)
        Patch positions only (prefix-token positions removed), row-major.
    old_size : (int, int)
        The embedding's grid (M0, M1), e.g. (37, 37) for DINOv2.
    new_size : (int, int)
        Target grid (gh, gw): rows, columns of patches.
    interp : PosEmbedInterp
        Mode, antialias and scale-factor offset (see :class:`PosEmbedInterp`).

    Returns
    -------
    torch.Tensor, (1, gh * gw, D)
        In the dtype of ``pos_embed`` (interpolated in float32); ``pos_embed`` itself when
        the grids are equal (no interpolation on the training grid).

    Raises
    ------
    VitsegError
        If the offset scale factor does not give the requested grid.

    References
    ----------
    .. [1] facebookresearch/dinov2, ``DinoVisionTransformer.interpolate_pos_encoding``
       (dinov2/models/vision_transformer.py); Oquab et al., arXiv 2304.07193.

    Examples
    --------
    >>> pe = torch.randn(1, 37 * 37, 8)
    >>> ref = PosEmbedInterp("bicubic", antialias=False, offset=0.1)
    >>> resample_pos_embed(pe, (37, 37), (16, 20), ref).shape
    torch.Size([1, 320, 8])
    >>> resample_pos_embed(pe, (37, 37), (37, 37), ref) is pe
    True
    """
    m0, m1 = int(old_size[0]), int(old_size[1])
    gh, gw = int(new_size[0]), int(new_size[1])
    if (gh, gw) == (m0, m1):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed.float().reshape(1, m0, m1, dim).permute(0, 3, 1, 2)
    if interp.offset:
        kwargs = {"scale_factor": ((gh + interp.offset) / m0, (gw + interp.offset) / m1)}
    else:
        kwargs = {"size": (gh, gw)}
    out = F.interpolate(grid, mode=interp.mode, antialias=interp.antialias, **kwargs)
    if tuple(out.shape[-2:]) != (gh, gw):  # pragma: no cover - the offset exists to prevent this
        raise VitsegError(f"position-embedding resampling gave a {tuple(out.shape[-2:])} grid, not {(gh, gw)}.")
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(pos_embed.dtype)


def _pos_embed_ref(self, x: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer._pos_embed`` resampling the embedding as ``self._vitseg_pos_interp``
    says (installed per model by :class:`ViTBackbone`); timm's own method when that is ``None``."""
    interp = getattr(self, "_vitseg_pos_interp", None)
    if interp is None or self.pos_embed is None or not self.dynamic_img_size or x.ndim != 4:
        return type(self)._pos_embed(self, x)
    b, h, w, c = x.shape
    n_pre = 0 if self.no_embed_class else self.num_prefix_tokens
    pe = self.pos_embed
    prefix_pe, patch_pe = pe[:, :n_pre], pe[:, n_pre:]
    patch_pe = resample_pos_embed(patch_pe, tuple(self.patch_embed.grid_size), (h, w), interp)
    x = x.reshape(b, h * w, c)
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(b, -1, -1))
    if self.reg_token is not None:
        to_cat.append(self.reg_token.expand(b, -1, -1))
    if self.no_embed_class:  # DINOv2 with registers: add, then prepend the prefix tokens
        x = x + patch_pe
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:  # DINOv2 without registers: the CLS position is part of pos_embed
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + (torch.cat([prefix_pe, patch_pe], dim=1) if n_pre else patch_pe)
    return self.pos_drop(x)


def build_timm_model(cfg: BackboneCfg, *, init_values: float | None = None, device=None) -> torch.nn.Module:
    """Create the (randomly initialised) timm ``VisionTransformer`` of a registry entry.

    Parameters
    ----------
    cfg : BackboneCfg
        The registry entry.
    init_values : float, optional
        LayerScale initial value (timm's DINOv2 default is 1e-5; tests use 1.0).
    device : str or torch.device, optional
        ``'meta'`` builds the model without allocating memory (used to check a checkpoint's
        layout against the architecture).

    Returns
    -------
    timm.models.vision_transformer.VisionTransformer
        With ``dynamic_img_size=True`` and no classifier; ``pos_embed`` is ``None`` unless
        ``cfg.position == 'learned'`` (timm >= 1.0.26 still prepends the prefix tokens).
    """
    import timm

    # depth from the entry (the architecture's own for every registered entry; a reduced-depth
    # copy of an entry builds a shallower model of the same width, as the fidelity tests do)
    kwargs = dict(pretrained=False, dynamic_img_size=True, num_classes=0, depth=cfg.depth)
    if init_values is not None:
        kwargs["init_values"] = init_values
    if device is not None:
        with torch.device(device):
            model = timm.create_model(cfg.timm_arch, **kwargs)
    else:
        model = timm.create_model(cfg.timm_arch, **kwargs)
    if cfg.position != "learned":
        model.pos_embed = None
    return model


class ViTBackbone(torch.nn.Module):
    """A DINOv2-family ViT with a uniform patch-feature interface.

    Parameters
    ----------
    cfg : BackboneCfg
        The registry entry.
    model : timm.models.vision_transformer.VisionTransformer
        Created with ``dynamic_img_size=True``; for ``cfg.position != 'learned'`` its
        ``pos_embed`` is ``None``.
    pretrained : bool
        Whether real weights were loaded (``False`` for random weights, tests only).
    weights_path : pathlib.Path, optional
        The checkpoint file the weights came from.
    weights_sha256 : str, optional
        SHA-256 of that file, recorded in classifier files.

    Notes
    -----
    Inputs are normalised RGB tensors of shape (B, 3, H, W), float32, with H and W
    multiples of ``cfg.patch_size``; outputs are channels-first (B, D, H/14, W/14).
    """

    def __init__(self, cfg: BackboneCfg, model: torch.nn.Module, *, pretrained: bool,
                 weights_path: Path | None = None, weights_sha256: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.pretrained = pretrained
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256 if pretrained else "random"
        self.load_report = None  # a weights.LoadReport when real weights were loaded
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        # the position embedding is resampled as the entry's reference code does it (also in
        # code that calls model._pos_embed directly, such as the SINDER repair)
        model._vitseg_pos_interp = cfg.pos_embed_interp
        if getattr(model, "pos_embed", None) is not None and hasattr(model, "_pos_embed"):
            model._pos_embed = types.MethodType(_pos_embed_ref, model)

    # -- properties -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        return self.model.num_prefix_tokens

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- attention bias ---------------------------------------------------------
    def attn_bias(self, gh: int, gw: int, device=None, dtype=torch.float32) -> torch.Tensor | None:
        """Additive attention bias for a gh x gw patch grid, or ``None``.

        Returns
        -------
        torch.Tensor or None
            (N, N) float with N = prefix tokens + gh * gw, broadcast over batch and heads
            (or (heads, N, N) for per-head slopes); ``None`` for backbones without a bias.
        """
        if self.cfg.position != "alibi":
            return None
        from .alibi import alibi_bias  # local: only ALiBi backbones need it

        key = (gh, gw, str(device), dtype)
        bias = self._bias_cache.get(key)
        if bias is None:
            bias = alibi_bias(gh, gw, num_prefix_tokens=self.num_prefix_tokens,
                              **self.cfg.extra.get("alibi", {})).to(device=device, dtype=dtype)
            self._bias_cache = {key: bias}  # keep only the latest grid
        return bias

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        dtype = x.dtype if x.is_floating_point() else torch.float32
        dev_type = x.device.type
        try:  # under autocast, SDPA's query has the autocast dtype: the float mask must match
            if torch.is_autocast_enabled(dev_type):
                dtype = torch.get_autocast_dtype(dev_type)
        except (TypeError, AttributeError, RuntimeError):  # pragma: no cover - older torch
            pass
        return self.attn_bias(gh, gw, device=x.device, dtype=dtype)

    def _interp_for(self, pos_embed_interp) -> PosEmbedInterp | None:
        if pos_embed_interp is None or pos_embed_interp == "reference":
            return self.cfg.pos_embed_interp
        if pos_embed_interp == "timm":
            return None
        if isinstance(pos_embed_interp, PosEmbedInterp):
            return pos_embed_interp
        raise VitsegError(
            f"pos_embed_interp must be one of {POS_EMBED_INTERP_MODES} or a PosEmbedInterp; "
            f"got {pos_embed_interp!r}."
        )

    def _run(self, fn, pos_embed_interp):
        """Call ``fn()`` with the model's position-embedding resampling set for this call."""
        model = self.model
        before = getattr(model, "_vitseg_pos_interp", None)
        model._vitseg_pos_interp = self._interp_for(pos_embed_interp)
        try:
            return fn()
        finally:
            model._vitseg_pos_interp = before

    def _check_input(self, x: torch.Tensor) -> None:
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"expected a (B, 3, H, W) tensor with H, W multiples of {p}; got {tuple(x.shape)}")

    # -- forward ----------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, *, pos_embed_interp=None) -> torch.Tensor:
        """Final patch features (after the last LayerNorm), prefix tokens dropped.

        Parameters
        ----------
        x : torch.Tensor, (B, 3, H, W) float32
            Normalised RGB, H and W multiples of the patch size.
        pos_embed_interp : {'reference', 'timm'}, PosEmbedInterp or None
            How a learned position embedding is resampled to a grid other than 37 x 37:
            ``None`` / ``'reference'``: as the entry's reference code
            (``cfg.pos_embed_interp``); ``'timm'``: timm's ``resample_abs_pos_embed``
            defaults (releases up to 0.1.x). No effect on ALiBi / NoPE backbones.

        Returns
        -------
        torch.Tensor, (B, D, H/p, W/p)

        Raises
        ------
        VitsegError
            Unknown ``pos_embed_interp``.
        """
        self._check_input(x)
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        mask = self._mask_for(x)
        tokens = self._run(lambda: self.model.forward_features(x, attn_mask=mask), pos_embed_interp)
        patches = tokens[:, self.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def forward_blocks(self, x: torch.Tensor, indices=None, *, norm: bool = False,
                       return_prefix_tokens: bool = False, pos_embed_interp=None):
        """Patch features after each requested block.

        Parameters
        ----------
        x : torch.Tensor, (B, 3, H, W) float32
        indices : int, list of int or None
            Block indices (negative count from the end); an int n means the last n blocks;
            ``None`` means all blocks.
        norm : bool
            Apply the final LayerNorm (``False``: raw residual stream, as SINDER and the
            token-norm diagnostics need).
        return_prefix_tokens : bool
            Also return the prefix tokens of each block, (B, P, D).
        pos_embed_interp : {'reference', 'timm'}, PosEmbedInterp or None
            As in :meth:`forward_features`.

        Returns
        -------
        list of torch.Tensor, each (B, D, H/p, W/p)
            Or a list of ``(patches, prefix)`` pairs with ``return_prefix_tokens=True``.
        """
        self._check_input(x)
        if indices is None:
            indices = list(range(len(self.model.blocks)))
        mask = self._mask_for(x)
        out = self._run(lambda: self.model.forward_intermediates(
            x, indices=indices, norm=norm, output_fmt="NCHW", intermediates_only=True,
            return_prefix_tokens=return_prefix_tokens, attn_mask=mask,
        ), pos_embed_interp)
        return list(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.forward_features(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, pretrained={self.pretrained}, position={self.cfg.position!r}"
