"""Backbone registry, construction and weights resolution.

``create_backbone(name, pretrained=...)`` is the only constructor; ``list_backbones()``
lists the registered names. Random weights (``pretrained=False``, reproducible with
``seed=``) exist for tests only and are never substituted for missing pretrained weights.

Registered families: DINOv2 (:mod:`.dinov2`), ALiBi-DINOv2 and NoPE (:mod:`.alibi`,
Pawlowsky et al. 2026, arXiv 2603.16840) and SINDER-repaired DINOv2 (:mod:`.sinder`, Wang,
Zhang and Salzmann, ECCV 2024, arXiv 2407.16826). Where weights are looked for and how they
are checked: :mod:`.weights`.
"""

from __future__ import annotations

import torch

from .._validation import VitsegError
from . import alibi as _alibi  # noqa: F401  (registers the ALiBi / NoPE entries)
from . import dinov2 as _dinov2  # noqa: F401  (registers the DINOv2 entries)
from . import sinder as _sinder  # noqa: F401  (registers the SINDER entries)
from ._base import ViTBackbone, build_timm_model, resample_pos_embed
from ._registry import (
    BackboneCfg,
    PosEmbedInterp,
    get_backbone_cfg,
    list_backbones,
    register_backbone,
)
from .alibi import alibi_bias
from .sinder import (
    apply_repair,
    defect_directions,
    detect_defective_tokens,
    iter_repair,
    load_repair,
    save_repair,
)
from .weights import (
    NO_WEIGHTS_NOTICE,
    WeightsNotFoundError,
    available_backbones,
    default_backbone,
    download_weights,
    import_weights,
    list_weights,
    resolve_weights,
    weights_dir,
)

__all__ = [
    "BackboneCfg",
    "PosEmbedInterp",
    "ViTBackbone",
    "resample_pos_embed",
    "WeightsNotFoundError",
    "NO_WEIGHTS_NOTICE",
    "create_backbone",
    "get_backbone_cfg",
    "list_backbones",
    "register_backbone",
    "available_backbones",
    "default_backbone",
    "weights_dir",
    "resolve_weights",
    "download_weights",
    "import_weights",
    "list_weights",
    "alibi_bias",
    "defect_directions",
    "detect_defective_tokens",
    "iter_repair",
    "save_repair",
    "load_repair",
    "apply_repair",
]


def create_backbone(name: str, *, pretrained: bool = True, weights=None, device="cpu",
                    init_values: float | None = None, seed: int | None = None) -> ViTBackbone:
    """Build a registered backbone.

    Parameters
    ----------
    name : str
        A name from :func:`list_backbones`.
    pretrained : bool
        Load real weights (resolved from ``weights``, ``$VITSEG_WEIGHTS_DIR``, the Hugging Face
        cache, or downloaded when online). ``False`` gives random weights, for tests only.
    weights : str or pathlib.Path, optional
        Explicit checkpoint file; wins over every other source.
    device : str or torch.device
        Where to put the model.
    init_values : float, optional
        LayerScale initial value for random weights (tests use 1.0 so that attention
        visibly acts; timm's DINOv2 default is 1e-5).
    seed : int, optional
        Random weights only: initialise them after ``torch.manual_seed(seed)`` inside
        ``torch.random.fork_rng()``, so that the same seed gives the same weights and the
        global torch RNG state is left untouched. ``None`` draws from the global RNG.

    Returns
    -------
    ViTBackbone
        In eval mode, on ``device``.

    Raises
    ------
    VitsegError
        Unknown name, or ``seed`` given with ``pretrained=True`` (real weights involve no
        random draw, so a seed there is a mistake).
    WeightsNotFoundError
        ``pretrained=True`` and no weights file can be found (the message names the file
        and where to put it).

    Examples
    --------
    >>> import torch
    >>> a = create_backbone("dinov2_vits14", pretrained=False, seed=0)
    >>> b = create_backbone("dinov2_vits14", pretrained=False, seed=0)
    >>> torch.equal(a.model.cls_token, b.model.cls_token), a.pretrained
    (True, False)
    """
    cfg = get_backbone_cfg(name)
    if not pretrained:
        if seed is None:
            model = build_timm_model(cfg, init_values=init_values)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = build_timm_model(cfg, init_values=init_values)
        backbone = ViTBackbone(cfg, model, pretrained=False)
    else:
        if seed is not None:
            raise VitsegError(
                f"seed={seed!r} only applies to random weights (pretrained=False); "
                f"pretrained backbone {name!r} takes its weights from a checkpoint."
            )
        from .weights import load_pretrained, resolve_weights

        resolve_weights(name, weights)  # a missing file fails before anything is built
        # no random initialisation: the model is built on the meta device and takes the
        # checkpoint's tensors over
        model = build_timm_model(cfg, device="meta")
        backbone = load_pretrained(cfg, model, weights=weights)
    return backbone.to(device).eval()
