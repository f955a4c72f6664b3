"""The feature configuration: one JSON-serialisable description of a feature stack."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .._validation import VitsegError, check_number, check_option

__all__ = ["FeatureConfig", "CLASSICAL_FAMILIES", "UPSAMPLERS"]

#: Classical filter families, in the order their channels appear.
CLASSICAL_FAMILIES = ("gaussian", "gradient", "laplacian", "hessian", "structure", "dog")
#: ViT feature upsampling methods (see :mod:`napari_vitseg.features.upsample`).
UPSAMPLERS = ("bilinear", "guided")
#: Largest Gaussian scale (px) and number of scales of the classical filters.
MAX_SIGMA = 256.0
MAX_SIGMAS = 16


@dataclass(frozen=True)
class FeatureConfig:
    """Describes every per-pixel feature the classifier sees.

    Serialises to JSON (:meth:`to_json`) and is stored in every classifier file; a file is
    only applied with exactly the configuration it was trained with.

    Parameters
    ----------
    backbone : str or None
        Registered ViT backbone name (see :func:`napari_vitseg.backbones.list_backbones`),
        or ``None`` for classical features only.
    classical : bool
        Include the classical multiscale filters.
    sigmas : tuple of float
        Gaussian scales of the classical filters, in pixels.
    families : tuple of str
        Classical filter families, a subset of :data:`CLASSICAL_FAMILIES`.
    include_intensity : bool
        Include the raw intensity (sigma = 0) as a feature.
    upsample : {'bilinear', 'guided'}
        How ViT patch features (1/14 of the resolution) are brought to the pixel grid.
    vit_pca : int or None
        Reduce the ViT channels to this many principal components, fitted on the patch tokens
        of the first training plane and stored with the classifier; ``None`` keeps all
        channels. PCA is applied to the tokens before upsampling (exact, as both upsamplers
        are linear), so 32 components make the guided upsampling ~9x cheaper and the feature
        cache 12x smaller than 384 channels (see ``benchmarks/bench_vit.py``).
    tile_size : int
        ViT tile (window) side in pixels; rounded to a multiple of the patch size.
    tile_overlap : int
        Overlap between neighbouring ViT tiles in pixels (blended with a linear ramp).
    batch_size : int
        Tiles per ViT forward pass.
    guided_radius : int
        Guided-filter window radius in pixels (``upsample='guided'``).
    guided_eps : float
        Guided-filter regularisation, for an image scaled to [0, 1].
    vit_channels : tuple of int or None
        Channels fed to the ViT for a multichannel image (1 or 3 of them); ``None`` takes a
        grey or RGB image as it is. Classical features are computed for every channel.
    """

    backbone: str | None = None
    classical: bool = True
    sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    families: tuple[str, ...] = CLASSICAL_FAMILIES
    include_intensity: bool = True
    upsample: str = "guided"
    vit_pca: int | None = 32
    tile_size: int = 518
    tile_overlap: int = 112
    batch_size: int = 4
    guided_radius: int = 8
    guided_eps: float = 1e-3
    vit_channels: tuple[int, ...] | None = None
    _version: int = field(default=1, repr=False)

    def __post_init__(self):
        try:
            object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        except (TypeError, ValueError):
            raise VitsegError(f"sigmas must be numbers (pixels); got {self.sigmas!r}.") from None
        object.__setattr__(self, "families", tuple(self.families))
        if self.vit_channels is not None:
            object.__setattr__(self, "vit_channels", tuple(int(c) for c in self.vit_channels))
        if self.backbone in ("none", "", "None"):
            object.__setattr__(self, "backbone", None)
        for fam in self.families:
            check_option(fam, CLASSICAL_FAMILIES, "families")
        check_option(self.upsample, UPSAMPLERS, "upsample")
        if len(self.sigmas) > MAX_SIGMAS or any(not (0 < s <= MAX_SIGMA) for s in self.sigmas):
            raise VitsegError(
                f"sigmas must be at most {MAX_SIGMAS} scales in (0, {MAX_SIGMA:g}] pixels; got {self.sigmas}."
            )
        if self.backbone is None and not self.classical:
            raise VitsegError("The feature config has no features: enable classical features or pick a backbone.")
        if self.classical and not (self.sigmas or self.include_intensity):
            raise VitsegError("Classical features need at least one sigma or include_intensity=True.")
        if self.vit_pca is not None and self.vit_pca < 1:
            raise VitsegError(f"vit_pca must be a positive number of components or None; got {self.vit_pca}.")
        for name, low, high in (("tile_size", 28, 4096), ("tile_overlap", 0, 4095), ("batch_size", 1, 256),
                                ("guided_radius", 0, 256)):
            check_number(getattr(self, name), name, low=low, high=high, owner="FeatureConfig")
        check_number(self.guided_eps, "guided_eps", kind="float", low=1e-12, high=1e6, owner="FeatureConfig")
        check_number(self.vit_pca, "vit_pca", low=1, high=4096, allow_none=True, owner="FeatureConfig")
        if self.tile_size < 28 or self.tile_overlap < 0 or self.tile_overlap >= self.tile_size:
            raise VitsegError(
                f"tile_size must be >= 28 px and 0 <= tile_overlap < tile_size; got {self.tile_size}, {self.tile_overlap}."
            )

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-JSON dictionary (tuples become lists)."""
        d = asdict(self)
        d["version"] = d.pop("_version")
        d["sigmas"] = list(d["sigmas"])
        d["families"] = list(d["families"])
        if d["vit_channels"] is not None:
            d["vit_channels"] = list(d["vit_channels"])
        return d

    def to_json(self) -> str:
        """JSON text; ``FeatureConfig.from_json(cfg.to_json()) == cfg``."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`VitsegError`."""
        d = dict(d)
        version = d.pop("version", 1)
        if version != 1:
            raise VitsegError(f"Feature config version {version} is not supported by this napari-vitseg.")
        names = {f.name for f in fields(cls)} - {"_version"}
        unknown = set(d) - names
        if unknown:
            raise VitsegError(f"Unknown feature config keys {sorted(unknown)}; upgrade napari-vitseg.")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> FeatureConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> FeatureConfig:
        """A copy with some fields changed."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return FeatureConfig(**d)

    @property
    def key(self) -> str:
        """A stable string key for caches (the JSON text)."""
        return self.to_json()
