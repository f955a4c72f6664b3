"""The feature configuration: one JSON-serialisable description of a feature stack."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .._validation import VitsegError, check_number, check_option

__all__ = ["FeatureConfig", "CLASSICAL_FAMILIES", "EXTRA_FAMILIES", "ALL_FAMILIES", "UPSAMPLERS",
           "INTENSITY_MODES", "POS_EMBED_INTERP_MODES",
           "DEFAULT_FAMILIES", "DEFAULT_SIGMAS", "FEATURE_CONFIG_VERSION", "V1_DEFAULTS", "V2_DEFAULTS",
           "V3_FEATURE_DEFAULTS", "V4_DEFAULTS", "V5_DEFAULTS", "SPATIAL_MODES", "TILING_MODES",
           "VIT_BUDGET_MIB"]

#: Classical filter families, in the order their channels appear.
CLASSICAL_FAMILIES = ("gaussian", "gradient", "laplacian", "hessian", "structure", "dog")
#: Further families (``docs/features.md`` has their measured effect): ``'variance'`` (local
#: standard deviation per scale), ``'membrane'`` (Weka's membrane projections: oriented line
#: filters), ``'context'`` (Gaussian context at sigma 32 and 64 px computed on a downsampled
#: whole plane) and ``'bilateral'`` (edge-preserving smoothing, OpenCV's bilateral filter).
#: Their channels follow those of :data:`CLASSICAL_FAMILIES`, so adding them leaves the
#: earlier channels unchanged.
EXTRA_FAMILIES = ("variance", "membrane", "context", "bilateral")
#: Every accepted family, in channel order.
ALL_FAMILIES = CLASSICAL_FAMILIES + EXTRA_FAMILIES
#: The default families of a new configuration (version 4): Gaussian, gradient, Hessian and
#: structure tensor at every scale plus ``'bilateral'``. Version 3 added the Laplacian and the
#: difference of Gaussians; dropping them (blob responses the Hessian eigenvalues already give)
#: placed boundaries better and raised the mean mIoU of ``benchmarks/bench_quality.py`` from
#: 0.815 to 0.818 at 0.84x the featurising time (``docs/quality.md``, Run 6).
DEFAULT_FAMILIES = ("gaussian", "gradient", "hessian", "structure", "bilateral")
#: The default Gaussian scales (px) of a new configuration (version 4; 0.5 px added for
#: one-pixel structures such as membranes and particle edges).
DEFAULT_SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: The defaults of version-3 configurations (for dictionaries that do not name them).
V3_FEATURE_DEFAULTS = {"families": CLASSICAL_FAMILIES + ("bilateral",), "sigmas": (1.0, 2.0, 4.0, 8.0, 16.0)}
#: ViT feature upsampling methods (see :mod:`napari_vitseg.features.upsample`).
UPSAMPLERS = ("bilinear", "guided")
#: Largest Gaussian scale (px) and number of scales of the classical filters.
MAX_SIGMA = 256.0
MAX_SIGMAS = 16
#: How image intensities become the [0, 1] RGB a ViT sees (see :func:`napari_vitseg.features.vit.to_rgb01`).
INTENSITY_MODES = ("reference", "percentile")
#: How a learned position embedding is resampled (see :meth:`napari_vitseg.backbones.ViTBackbone.forward_features`).
POS_EMBED_INTERP_MODES = ("reference", "timm")
#: How ViT windows are chosen (see :func:`napari_vitseg.features.vit.vit_patch_features`):
#: the whole image when it fits the memory budget, else tiles; or always tiles.
TILING_MODES = ("auto", "always")
#: Default memory budget (MiB) of whole-image ViT inference (attention of one block; see
#: :func:`napari_vitseg.features.vit.whole_image_fits`).
VIT_BUDGET_MIB = 2048
#: Current version of the serialised config.
FEATURE_CONFIG_VERSION = 6
#: Values that version-1 configs (releases up to 0.1.x) did not store: what those releases did.
V1_DEFAULTS = {"intensity": "percentile", "pos_embed_interp": "timm", "vit_autocast": None}
#: Values that version-1 and version-2 configs did not store: they always tiled.
V2_DEFAULTS = {"vit_tiling": "always", "vit_budget_mib": VIT_BUDGET_MIB}
#: Values that versions 1 to 4 did not store: every scale at full resolution.
V4_DEFAULTS = {"pyramid": False}
#: Values that versions 1 to 5 did not store: filters per plane.
V5_DEFAULTS = {"spatial": "2d", "z_anisotropy": 1.0}
#: ``spatial`` choices: chosen from the training stack when a model is trained, filters per
#: plane, or the fine scales across the planes of a stack.
SPATIAL_MODES = ("auto", "2d", "3d")
#: Largest z step / pixel size ratio (``z_anisotropy``).
MAX_Z_ANISOTROPY = 1000.0
#: Smallest one: planes at most twice as dense as the pixels. The 3D filters read
#: ``z_radius`` ~ 12 / ``z_anisotropy`` planes on each side at the default scales (24 at 0.5), so
#: a smaller ratio (e.g. a file declaring a z spacing of 1e-9) would read and hold hundreds to
#: thousands of planes per plane.
MIN_Z_ANISOTROPY = 0.5


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
        Gaussian scales of the classical filters, in pixels; default :data:`DEFAULT_SIGMAS`
        (0.5 to 16). Dictionaries of versions 1 to 3 that do not name their scales get 1 to 16.
    families : tuple of str
        Classical filter families, a subset of :data:`ALL_FAMILIES`; default
        :data:`DEFAULT_FAMILIES` (Gaussian, gradient, Hessian, structure tensor and
        ``'bilateral'``; the Laplacian, difference of Gaussians and the other
        :data:`EXTRA_FAMILIES` are opt-in). Dictionaries of versions 1 and 2 that do not name
        their families get :data:`CLASSICAL_FAMILIES`, version 3 ones
        :data:`CLASSICAL_FAMILIES` + ``'bilateral'``: the defaults of those versions.
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
    intensity : {'reference', 'percentile'}
        How intensities are scaled to [0, 1] before the ViT's ImageNet normalisation (see
        :func:`~napari_vitseg.features.vit.to_rgb01`): ``'reference'`` as the papers' code
        (uint8 / 255, other integers by their dtype range, floats as given);
        ``'percentile'``: each plane's 0.5 / 99.5 percentiles to 0 / 1. Classifier files
        without this key (version 1) used ``'percentile'``. The guide image of the guided
        upsampling is percentile-scaled in both cases. ``docs/backbones.md`` argues the
        default.
    pos_embed_interp : {'reference', 'timm'}
        How a learned position embedding is resampled for windows other than 518 x 518 px:
        as the backbone's reference code (``BackboneCfg.pos_embed_interp``) or with timm's
        defaults. Version-1 files used ``'timm'``; the two agree for register models.
    vit_autocast : bool or None
        Run the ViT under bf16 autocast. ``False`` (default): float32, the features the
        classifier was trained on do not depend on the device (bf16 changes them by ~0.6 %);
        ``True``: faster on recent GPUs; ``None``: on for CUDA, off otherwise (version-1
        files).
    vit_tiling : {'auto', 'always'}
        ``'auto'``: the whole image in one ViT forward pass when its attention fits
        ``vit_budget_mib`` (:func:`~napari_vitseg.features.vit.whole_image_fits`, a rule of
        the image shape and the backbone only, not of the device), windows of ``tile_size``
        above it; ``'always'``: windows of ``tile_size`` (files of versions 1 and 2).
        ``docs/backbones.md`` (Tiling) describes what tiling changes.
    vit_budget_mib : int
        Memory budget of whole-image inference in MiB (attention matrices of one block,
        ``4 * heads * tokens**2 * (2 + ALiBi)`` bytes); 2048 runs 1024 x 1024 px whole
        with ViT-S.
    pyramid : bool
        Compute the classical scales of 8 px and more on a scale-space pyramid (the image
        reduced by 2 for 8 px, by 4 for 16 px; ``classical_features(pyramid=True)``): the same
        channels, interpolated back, at about 0.6x the featurising time. Default ``True``
        (version 5); files of versions 1 to 4 computed every scale at full resolution and
        keep doing so (:data:`V4_DEFAULTS`).
    spatial : {'auto', '2d', '3d'}
        ``'2d'``: every filter per plane. ``'3d'``: for (Z, Y, X) stacks the
        Gaussian-derivative families at scales up to 2 px are computed across planes
        (:mod:`napari_vitseg.features.volume`; ilastik's 3D filters); larger scales and the
        bilateral, membrane and context families stay per plane. A single image, or a plane
        given without its stack, gets the 2D channels. Version 6. ``'auto'`` (default): chosen
        when a model is trained (:meth:`Segmenter.fit <napari_vitseg.Segmenter.fit>`), from the
        training image's pixels (:func:`~napari_vitseg.features.volume.resolve_spatial`): ``'3d'``
        with the estimated ``z_anisotropy`` for a stack whose neighbouring planes are as alike
        as pixels at most 2 px apart (a volume of nearly isotropic voxels), else ``'2d'``; the
        classifier file stores the choice. A :class:`~napari_vitseg.features.Featurizer` given
        ``'auto'`` computes the 2D channels.
    z_anisotropy : float
        z step / pixel size of the stack (1 for isotropic voxels, e.g. 5 for 50 nm sections
        of 10 nm pixels): the Gaussians in z span ``sigma / z_anisotropy`` planes
        (``spatial='3d'`` only; ``'auto'`` estimates it). :data:`MIN_Z_ANISOTROPY` (0.5) to
        :data:`MAX_Z_ANISOTROPY` (1000).

    Notes
    -----
    ``from_dict`` migrates dictionaries of earlier versions by filling the keys they lack
    with what those versions did: :data:`V1_DEFAULTS` (version 1), :data:`V2_DEFAULTS`
    (versions 1-2), :data:`V4_DEFAULTS` (versions 1-4), :data:`V5_DEFAULTS` (versions 1-5), so
    that old classifier files compute
    exactly what they computed when they were saved; new configs get the defaults above.

    Examples
    --------
    >>> FeatureConfig.from_dict({"version": 1, "backbone": None}).intensity
    'percentile'
    >>> FeatureConfig().intensity, FeatureConfig().to_dict()["version"]
    ('reference', 6)
    >>> FeatureConfig.from_dict({"version": 4, "backbone": None}).pyramid
    False
    >>> FeatureConfig.from_dict({"version": 2, "backbone": None}).vit_tiling
    'always'
    """

    backbone: str | None = None
    classical: bool = True
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    families: tuple[str, ...] = DEFAULT_FAMILIES
    include_intensity: bool = True
    upsample: str = "guided"
    vit_pca: int | None = 32
    tile_size: int = 518
    tile_overlap: int = 112
    batch_size: int = 4
    guided_radius: int = 8
    guided_eps: float = 1e-3
    vit_channels: tuple[int, ...] | None = None
    intensity: str = "reference"
    pos_embed_interp: str = "reference"
    vit_autocast: bool | None = False
    vit_tiling: str = "auto"
    vit_budget_mib: int = VIT_BUDGET_MIB
    pyramid: bool = True
    spatial: str = "auto"
    z_anisotropy: float = 1.0
    _version: int = field(default=FEATURE_CONFIG_VERSION, repr=False)

    def __post_init__(self):
        def numbers(value, name: str, kind: str, what: str) -> tuple:
            """A list / tuple of numbers (not a string, not bools) -> a tuple, else VitsegError."""
            try:
                if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
                    raise VitsegError(name)
                return tuple(check_number(v, name, kind=kind) for v in value)
            except VitsegError:
                raise VitsegError(f"{name} must be {what}; got {value!r}.") from None

        object.__setattr__(self, "sigmas", numbers(self.sigmas, "sigmas", "float", "numbers (pixels)"))
        if not isinstance(self.families, (list, tuple)) or not all(isinstance(f, str) for f in self.families):
            raise VitsegError(f"families must be a list of names out of {sorted(ALL_FAMILIES)}; "
                              f"got {self.families!r} instead.")
        object.__setattr__(self, "families", tuple(self.families))
        if self.vit_channels is not None:
            object.__setattr__(self, "vit_channels", numbers(self.vit_channels, "vit_channels", "int",
                                                                "a list of channel indices (ints) or None"))
        if self.backbone is not None and not isinstance(self.backbone, str):
            raise VitsegError(f"backbone must be a backbone name or None; got {self.backbone!r} instead.")
        for name in ("classical", "include_intensity", "pyramid"):
            if not isinstance(getattr(self, name), bool) and type(getattr(self, name)).__name__ != "bool_":
                raise VitsegError(f"{name} must be True or False; got {getattr(self, name)!r} instead.")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.backbone in ("none", "", "None"):
            object.__setattr__(self, "backbone", None)
        for fam in self.families:
            check_option(fam, ALL_FAMILIES, "families")
        check_option(self.upsample, UPSAMPLERS, "upsample")
        check_option(self.intensity, INTENSITY_MODES, "intensity")
        check_option(self.pos_embed_interp, POS_EMBED_INTERP_MODES, "pos_embed_interp")
        if not (self.vit_autocast is None or isinstance(self.vit_autocast, bool)):
            raise VitsegError(f"vit_autocast must be True, False or None; got {self.vit_autocast!r}.")
        check_option(self.vit_tiling, TILING_MODES, "vit_tiling")
        check_option(self.spatial, SPATIAL_MODES, "spatial")
        check_number(self.z_anisotropy, "z_anisotropy", kind="float", low=MIN_Z_ANISOTROPY,
                     high=MAX_Z_ANISOTROPY, owner="FeatureConfig")
        object.__setattr__(self, "z_anisotropy", float(self.z_anisotropy))
        check_number(self.vit_budget_mib, "vit_budget_mib", low=1, high=2**30, owner="FeatureConfig")
        if len(self.sigmas) > MAX_SIGMAS or any(not (0 < s <= MAX_SIGMA) for s in self.sigmas):
            raise VitsegError(
                f"sigmas must be at most {MAX_SIGMAS} scales in (0, {MAX_SIGMA:g}] pixels; got {self.sigmas}."
            )
        if self.backbone is None and not self.classical:
            raise VitsegError("The feature config has no features: enable classical features or pick a backbone.")
        if self.classical and not (self.sigmas or self.include_intensity):
            raise VitsegError("Classical features need at least one sigma or include_intensity=True.")
        check_number(self.vit_pca, "vit_pca", low=1, high=4096, allow_none=True, owner="FeatureConfig")
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
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`VitsegError`.

        A version-1 dictionary (no ``version`` key, or 1) gets :data:`V1_DEFAULTS` and
        :data:`V2_DEFAULTS` for the keys it lacks, a version-2 one :data:`V2_DEFAULTS`, and
        dictionaries up to version 4 :data:`V4_DEFAULTS` (no pyramid), up to version 5
        :data:`V5_DEFAULTS` (per-plane filters); each is returned as a
        current-version config that computes the same features.
        """
        d = dict(d)
        version = d.pop("version", 1)
        if isinstance(version, bool) or version not in (1, 2, 3, 4, 5, FEATURE_CONFIG_VERSION):
            raise VitsegError(
                f"Feature config version {version} is not supported by this napari-vitseg "
                f"(it reads versions 1 to {FEATURE_CONFIG_VERSION}); upgrade napari-vitseg."
            )
        names = {f.name for f in fields(cls)} - {"_version"}
        unknown = set(d) - names
        added = {**(V1_DEFAULTS if version == 1 else {}), **(V2_DEFAULTS if version <= 2 else {}),
                 **(V4_DEFAULTS if version <= 4 else {}), **(V5_DEFAULTS if version <= 5 else {})}
        unknown |= set(d) & set(added)  # keys that this version did not have
        if unknown:
            raise VitsegError(f"Unknown feature config keys {sorted(unknown)}; upgrade napari-vitseg.")
        d = {**added, **d}
        # the defaults of earlier versions (every saved file names them; a hand-written dictionary may not)
        if version <= 2:
            d.setdefault("families", CLASSICAL_FAMILIES)
        if version <= 3:
            d.setdefault("families", V3_FEATURE_DEFAULTS["families"])
            d.setdefault("sigmas", V3_FEATURE_DEFAULTS["sigmas"])
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
