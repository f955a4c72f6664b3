"""The feature stack: classical filters per channel + upsampled ViT patch features.

:class:`Featurizer` turns one image plane into the (Y, X, F) float32 feature array the
classifier sees, exactly as its :class:`~napari_vitseg.features.config.FeatureConfig`
describes. Large planes are processed in row strips with a halo, so peak memory stays
bounded and the result equals the whole-plane computation (tested). The whole-plane classical
families ``'context'`` and ``'bilateral'`` have no halo: they are computed once from the whole
plane (memoised per plane key) and each strip takes its rows. With ``spatial='3d'`` the fine
scales of a plane of a stack (:class:`~napari_vitseg.features.volume.StackPlane`) are computed
across its neighbouring planes (:mod:`napari_vitseg.features.volume`).
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import VitsegError, as_float32
from .config import FeatureConfig

__all__ = ["Featurizer"]


def _source_dtype(plane) -> np.dtype:
    """The dtype of a plane as given (numpy, dask, zarr or nested lists)."""
    dt = getattr(plane, "dtype", None)
    return np.dtype(dt) if dt is not None else np.asarray(plane).dtype


def _take(buffer, shape) -> np.ndarray | None:
    """The first elements of a 1-D float32 ``buffer`` as a C-contiguous array of ``shape``, or
    None when there is no buffer or it is too small."""
    n = math.prod(shape)
    if buffer is None or buffer.dtype != np.float32 or buffer.ndim != 1 or buffer.size < n:
        return None
    return buffer[:n].reshape(shape)


class Featurizer:
    """Compute per-pixel features of image planes.

    Parameters
    ----------
    config : FeatureConfig
    backbone : ViTBackbone, optional
        A built backbone; when ``None`` and ``config.backbone`` names one, it is created with
        pretrained weights on first use (raising ``WeightsNotFoundError`` if they are missing).
    device : str or torch.device, optional
        Where the ViT (and the torch classical backend) run; default CUDA when available.
    strip_bytes : int
        Target size of one strip of features; planes whose features exceed it are processed
        in row strips with a halo.

    Attributes
    ----------
    pca_ : PCAReducer or None
        The ViT PCA basis once fitted (``config.vit_pca``); fitted on the first plane
        featurised, or explicitly with :meth:`fit_pca`.
    """

    def __init__(self, config: FeatureConfig, *, backbone=None, device=None, strip_bytes: int = 512 * 2**20):
        self.config = config
        self._backbone = backbone
        self.device = device
        self.strip_bytes = int(strip_bytes)
        self.pca_ = None
        self._tokens_key = None
        self._tokens = None
        self._guide_memo = (None, None)
        self._context_memo = None  # (plane key, {channel: channels of the whole-plane families})
        self._stack_memo = (None, {})  # (lazy stack, {plane index: (plane as read, digest)}): the last 3D window
        if backbone is not None and config.backbone is not None and backbone.name != config.backbone:
            raise VitsegError(f"Backbone {backbone.name!r} given for a feature config naming {config.backbone!r}.")

    # -- backbone ---------------------------------------------------------------
    @property
    def backbone(self):
        """The ViT backbone (created on first access) or ``None`` for classical-only configs."""
        if self.config.backbone is None:
            return None
        if self._backbone is None:
            from ..backbones import create_backbone

            self._backbone = create_backbone(self.config.backbone, pretrained=True, device=self._torch_device())
        return self._backbone

    @property
    def built_backbone(self):
        """The backbone if it was given or already built, else ``None`` (never builds it)."""
        return self._backbone

    @property
    def state_key(self) -> str:
        """Identity of everything the features depend on besides the pixels: the feature
        config, the backbone weights and the fitted ViT PCA basis (for cache keys)."""
        import hashlib

        h = hashlib.blake2b(self.config.key.encode(), digest_size=16)
        ident = self.backbone_identity
        if ident is not None:
            h.update(str(ident["weights_sha256"]).encode())
        if self.pca_ is not None:
            for v in self.pca_.to_arrays().values():
                h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()

    def _z_radius(self) -> int:
        """Planes on each side that the 3D channels of a plane read (0: per-plane features)."""
        cfg = self.config
        if cfg.spatial != "3d" or not cfg.classical:
            return 0
        from .volume import z_radius

        return z_radius(cfg.sigmas, cfg.families, cfg.z_anisotropy)

    def plane_digest(self, plane) -> str:
        """Content hash of what this featurizer's features of ``plane`` depend on (cache keys):
        the plane (:func:`~napari_vitseg.features.cache.content_digest`), and with 3D channels
        the planes of its stack they read, in the order they are read (mirrored at the ends).

        Parameters
        ----------
        plane : array-like, (Y, X) or (Y, X, C); a :class:`~napari_vitseg.features.volume.StackPlane`
            for 3D channels.

        Returns
        -------
        str
            32 hexadecimal characters.
        """
        from .cache import content_digest
        from .volume import _mirror, stack_of

        ctx = stack_of(plane) if self._z_radius() else None
        if ctx is None:
            return content_digest(plane)
        stack, z, n = ctx
        r = self._z_radius()
        window = self._window(stack, z, n)
        parts = [content_digest(np.asarray(plane))]
        parts += [window[_mirror(z + j, n)][1] if j else "" for j in range(-r, r + 1)]
        return content_digest(np.frombuffer(" ".join(parts).encode(), np.uint8))

    def _window(self, stack, z: int, n: int) -> dict[int, tuple[np.ndarray, str]]:
        """The planes within :meth:`_z_radius` of plane ``z`` of ``stack`` as read (their own
        dtype), with their content digests: ``{index: (plane, digest)}``.

        A lazy stack's (a file's) planes are kept for the next call, so the row bands of one plane
        and the next plane of a batch read each plane about once; a numpy stack is read afresh
        (free, and it may have been edited in place since)."""
        from .cache import content_digest

        r = self._z_radius()
        lo, hi = max(0, z - r), min(n - 1, z + r)  # mirrored indices stay within them
        held, memo = self._stack_memo
        lazy = not isinstance(stack, np.ndarray)
        window = {k: v for k, v in memo.items() if lo <= k <= hi} if lazy and held is stack else {}
        for k in range(lo, hi + 1):
            if k not in window:
                raw = np.asarray(stack[k])
                window[k] = (raw, content_digest(raw))
        self._stack_memo = (stack, window) if lazy else (None, {})
        return window

    @property
    def backbone_identity(self) -> dict | None:
        """Backbone name and weights SHA-256 (``'random'`` for random weights), for metadata."""
        if self.config.backbone is None:
            return None
        b = self.backbone
        return {"name": b.name, "weights_sha256": b.weights_sha256, "pretrained": bool(b.pretrained)}

    def _torch_device(self):
        import torch

        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # -- names ------------------------------------------------------------------
    def _vit_channels(self, n_channels: int) -> list[int]:
        cfg = self.config
        if cfg.vit_channels is not None:
            bad = [c for c in cfg.vit_channels if not 0 <= c < n_channels]
            if bad or len(cfg.vit_channels) not in (1, 3):
                raise VitsegError(
                    f"vit_channels must list 1 or 3 channel indices in 0..{n_channels - 1}; got {cfg.vit_channels}."
                )
            return list(cfg.vit_channels)
        if n_channels in (1, 3):
            return list(range(n_channels))
        raise VitsegError(
            f"The image has {n_channels} channels; a ViT takes 1 (grey) or 3 (RGB). Choose them with "
            "vit_channels (CLI: --vit-channels 0,1,2), or use --backbone none."
        )

    def feature_names(self, n_channels: int = 1) -> list[str]:
        """Names of the F feature channels, in order, for an image with ``n_channels``."""
        from .classical import classical_feature_names

        cfg = self.config
        names: list[str] = []
        if cfg.classical:
            base = classical_feature_names(cfg.sigmas, cfg.families, include_intensity=cfg.include_intensity)
            if n_channels == 1:
                names += base
            else:
                names += [f"ch{c}:{n}" for c in range(n_channels) for n in base]
        if cfg.backbone is not None:
            from ..backbones import get_backbone_cfg
            from .vit import vit_feature_names

            self._vit_channels(n_channels)
            n = cfg.vit_pca or get_backbone_cfg(cfg.backbone).embed_dim
            names += vit_feature_names(cfg.backbone, n, pca=bool(cfg.vit_pca))
        return names

    # -- ViT tokens ---------------------------------------------------------------
    def vit_tokens(self, plane: np.ndarray, key=None, progress=None, *, dtype=None) -> np.ndarray:
        """ViT patch tokens of a plane on the padded patch grid, PCA applied.

        Parameters
        ----------
        plane : ndarray, (Y, X) or (Y, X, C)
        key : hashable, optional
            Identity of the plane; the tokens of the last key are memoised.
        dtype : numpy dtype, optional
            The plane's dtype before any conversion to float (``config.intensity =
            'reference'`` scales by it); default ``plane.dtype``.

        Returns
        -------
        ndarray, (ceil(Y/p), ceil(X/p), D') float32
            Channels last, C-contiguous; D' is ``config.vit_pca`` or the backbone's
            ``embed_dim``.
        """
        from .vit import _project_tokens, vit_patch_features

        if key is not None and key == self._tokens_key:
            tokens = self._tokens
        else:
            cfg = self.config
            chans = self._vit_channels(1 if plane.ndim == 2 else plane.shape[-1])
            img = plane if plane.ndim == 2 else plane[..., chans]
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            tokens = vit_patch_features(
                img, self.backbone, tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap,
                batch_size=cfg.batch_size, channel_axis=None if img.ndim == 2 else -1,
                progress=progress, intensity=cfg.intensity, dtype=plane.dtype if dtype is None else dtype,
                pos_embed_interp=cfg.pos_embed_interp, autocast=cfg.vit_autocast,
                tiling=cfg.vit_tiling, budget_mib=cfg.vit_budget_mib,
            )
            if key is not None:  # memoise the raw tokens: bands of one plane share them
                self._tokens_key, self._tokens = key, tokens
        if self.config.vit_pca:
            if self.pca_ is None:
                self.fit_pca(tokens)
            tokens = _project_tokens(self.pca_, tokens)
        return np.ascontiguousarray(tokens, dtype=np.float32)

    def fit_pca(self, tokens: np.ndarray) -> None:
        """Fit the ViT PCA basis on raw tokens of the training plane(s), channels last:
        (gh, gw, D) as :func:`~napari_vitseg.features.vit.vit_patch_features` returns them,
        or (N, D), with D the backbone's ``embed_dim``.

        Raises
        ------
        VitsegError
            Tokens of another shape (e.g. channels first, (D, gh, gw)).
        """
        from .vit import PCAReducer, _token_rows

        tokens = np.asarray(tokens)
        d = self._embed_dim()
        if tokens.ndim not in (2, 3) or (d is not None and tokens.shape[-1] != d):
            raise VitsegError(
                f"fit_pca takes raw ViT tokens channels last, (gh, gw, {d or 'D'}) or (N, {d or 'D'}); "
                f"got shape {tokens.shape}."
            )
        # rows in the memory layout of earlier releases (bit-identical bases)
        self.pca_ = PCAReducer(n_components=self.config.vit_pca).fit(_token_rows(tokens))

    def _embed_dim(self) -> int | None:
        """The backbone's token width, without building the backbone (``None`` without one)."""
        if self._backbone is not None:
            return int(self._backbone.embed_dim)
        if self.config.backbone is None:
            return None
        from ..backbones import get_backbone_cfg

        return int(get_backbone_cfg(self.config.backbone).embed_dim)

    # -- features -----------------------------------------------------------------
    def _classical_halo(self) -> int:
        from .classical import classical_halo

        if not self.config.classical or not self.config.sigmas:
            return 0
        return classical_halo(self.config.sigmas, self.config.families, self.config.pyramid)

    def _band_start_step(self) -> int:
        """Rows a band's features must start on a multiple of: the largest pyramid reduction
        factor (so that the band's 2 x 2 blocks are the whole plane's), else 1."""
        from .classical import pyramid_factor

        if not (self.config.classical and self.config.pyramid and self.config.sigmas):
            return 1
        return max(pyramid_factor(s) for s in self.config.sigmas)

    def _vit_margin_tokens(self, patch: int) -> int:
        r = self.config.guided_radius if self.config.upsample == "guided" else 0
        return int(math.ceil((2 * r + patch) / patch)) + 1

    def n_features(self, n_channels: int = 1) -> int:
        """Number of feature channels F."""
        return len(self.feature_names(n_channels))

    def buffer_size(self, shape, n_channels: int = 1) -> int:
        """Elements of a ``buffer`` that :meth:`compute` can use for every row band of
        :meth:`strip_rows` rows (or the whole plane) of planes of ``shape``: a band, its
        classical halo above and below and the pyramid's row alignment."""
        y, x = shape[:2]
        rows = min(y, self.strip_rows(shape, n_channels) + 2 * self._classical_halo() + self._band_start_step())
        return rows * x * self.n_features(n_channels)

    def strip_rows(self, shape, n_channels: int = 1) -> int:
        """Rows per strip so that one strip of features stays within ``strip_bytes``."""
        y, x = shape[:2]
        per_row = x * self.n_features(n_channels) * 4
        rows = max(64, self.strip_bytes // max(per_row, 1))
        if self.config.backbone is not None:
            p = self.backbone.patch_size
            rows = max(p, rows // p * p)
        return int(min(y, rows))

    def compute(self, plane, *, rows: tuple[int, int] | None = None, key=None, progress=None,
                buffer: np.ndarray | None = None) -> np.ndarray:
        """Features of one plane (or of a band of its rows).

        Parameters
        ----------
        plane : array-like, (Y, X) or (Y, X, C), any real dtype
            Channels last.
        rows : (int, int), optional
            Compute only rows ``[rows[0], rows[1])``; the halo is taken from the plane.
        key : hashable, optional
            Plane identity for memoising the ViT tokens between bands.
        progress : callable, optional
            ``progress(done, total)`` over ViT tiles.
        buffer : ndarray, 1-D float32, optional
            Memory to compute into when it is large enough (see :meth:`buffer_size`); the result
            is then a view of it. A batch pipeline passes the buffer of a band it has finished
            with, which spares the kernel zero-filling ~40 bytes per pixel of fresh memory for
            every band (a fifth of the featurising time).

        Returns
        -------
        ndarray, (rows, X, F) float32
            Channel order as :meth:`feature_names`; C-contiguous.

        Raises
        ------
        VitsegError
            Bad dimensionality, dtype, non-finite values, unusable channel count.
        """
        src_dtype = _source_dtype(plane)
        from .volume import stack_of

        ctx = stack_of(plane) if self._z_radius() else None
        plane = as_float32(plane, "image plane")
        if plane.ndim not in (2, 3):
            raise VitsegError(f"A plane must be (Y, X) or (Y, X, C); got shape {plane.shape}.")
        ny, nx = plane.shape[:2]
        nc = 1 if plane.ndim == 2 else plane.shape[2]
        y0, y1 = (0, ny) if rows is None else (max(0, rows[0]), min(ny, rows[1]))
        cfg = self.config
        nf = self.n_features(nc)
        if cfg.classical and cfg.backbone is None and nc == 1 and (y0, y1) == (0, ny):
            # the common classical-only case, whole plane (also a band that is the whole plane, as
            # the batch path asks for planes up to `strip_rows`): write straight into the output
            # (one allocation, no copy; the whole-plane families are computed on this very plane)
            from .classical import classical_features

            out = classical_features(plane, sigmas=cfg.sigmas, families=cfg.families,
                                     include_intensity=cfg.include_intensity, backend="auto", device=self.device,
                                     pyramid=cfg.pyramid, out=_take(buffer, (ny, nx, nf)))
            if ctx is not None:
                self._volume_rows(ctx, plane, out, 0, ny)
            return out
        a0, a1 = y0, y1  # rows computed: the band, and with classical filters their halo
        if cfg.classical:
            h, step = self._classical_halo(), self._band_start_step()
            a0, a1 = max(0, y0 - h) // step * step, min(ny, y1 + h)
        # every channel of rows [a0, a1): the classical filters write straight into it (no copy of
        # a separate result); the band is the rows [y0, y1) of it (C-contiguous)
        buf = _take(buffer, (a1 - a0, nx, nf))
        if buf is None:
            buf = np.empty((a1 - a0, nx, nf), dtype=np.float32)
        out = buf[y0 - a0:y1 - a0]
        f = 0
        if cfg.classical:
            from .classical import WHOLE_PLANE_FAMILIES, classical_feature_names, classical_features

            # whole-plane families ('context', 'bilateral'; no halo): taken from the whole plane,
            # memoised; their channels are the last of each image channel's classical block
            local = tuple(fam for fam in cfg.families if fam not in WHOLE_PLANE_FAMILIES)
            whole = tuple(fam for fam in cfg.families if fam in WHOLE_PLANE_FAMILIES)
            k = len(classical_feature_names(cfg.sigmas, cfg.families, cfg.include_intensity))
            n_ctx = len(classical_feature_names((), whole, include_intensity=False)) if whole else 0
            for c in range(nc):
                if k > n_ctx:
                    ch = plane[a0:a1] if nc == 1 else plane[a0:a1, :, c]
                    classical_features(
                        ch, sigmas=cfg.sigmas, families=local, include_intensity=cfg.include_intensity,
                        backend="auto", device=self.device, pyramid=cfg.pyramid, out=buf[:, :, f:f + k - n_ctx],
                    )
                if n_ctx:
                    out[:, :, f + k - n_ctx:f + k] = self._whole_plane(plane, c, key)[y0:y1]
                f += k
        if cfg.backbone is not None:
            out[:, :, f:] = self._vit_band(plane, y0, y1, key=key, progress=progress, dtype=src_dtype)
        if ctx is not None and cfg.classical:
            self._volume_rows(ctx, plane, out, y0, y1)
        return out

    def _volume_rows(self, ctx, plane: np.ndarray, out: np.ndarray, y0: int, y1: int) -> None:
        """Overwrite the 3D channels (:func:`~napari_vitseg.features.volume.columns_3d`) of the
        rows ``[y0, y1)`` in ``out`` (rows, X, F) with their values across the stack's planes.

        Raises
        ------
        VitsegError
            The plane's pixels differ from its stack's plane (a plane changed after it was
            taken from its stack), or a neighbouring plane has another shape or non-finite values.
        """
        from concurrent.futures import ThreadPoolExecutor

        from .classical import _default_workers
        from .volume import columns_3d, row_halo, volume_channels

        stack, z, n = ctx
        names = self.feature_names(1 if plane.ndim == 2 else plane.shape[2])
        cols = columns_3d(names)
        if not cols:
            return
        ny = plane.shape[0]
        h = row_halo(self.config.sigmas, self.config.families)
        window = self._window(stack, z, n)
        for k, (raw, _) in window.items():
            if raw.shape != plane.shape:
                raise VitsegError(f"Plane {k} of the stack has shape {raw.shape}, plane {z} {plane.shape}; "
                                  "3D features need planes of one shape.")
        if not np.array_equal(plane[y0:y1], as_float32(window[z][0][y0:y1], "image plane")):
            raise VitsegError(f"Plane {z} differs from plane {z} of its stack; compute 3D features from the "
                              "stack's own planes.")

        def part(p0: int, p1: int) -> None:
            """The 3D channels of rows [p0, p1), from the stack's rows with their in-plane halo."""
            a0, a1 = max(0, p0 - h), min(ny, p1 + h)
            read: dict[int, np.ndarray] = {}

            def rows_of(k):
                if k not in read:
                    read[k] = as_float32(window[k][0][a0:a1], "image plane")
                return read[k]

            for c in range(1 if plane.ndim == 2 else plane.shape[2]):
                prefix = "" if plane.ndim == 2 else f"ch{c}:"
                wanted = {i: base for i, base in cols.items() if names[i] == prefix + base}
                if not wanted:
                    continue
                got = volume_channels(rows_of if plane.ndim == 2 else (lambda k, c=c: rows_of(k)[:, :, c]),
                                      n, z, sorted(set(wanted.values())), self.config.z_anisotropy)
                for i, base in wanted.items():
                    out[p0 - y0:p1 - y0, :, i] = got[base][p0 - a0:p1 - a0]

        # row parts in threads (OpenCV and numpy release the GIL), each at least 128 rows
        parts = _default_workers(None, max(1, (y1 - y0) // 128))
        edges = np.linspace(y0, y1, parts + 1).round().astype(int)
        if parts == 1:
            part(y0, y1)
            return
        with ThreadPoolExecutor(max_workers=parts) as pool:
            for f in [pool.submit(part, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]:
                f.result()

    def _whole_plane(self, plane, channel: int, key=None) -> np.ndarray:
        """The whole-plane families' channels (``'context'``, ``'bilateral'``) of one channel
        of the whole plane, (Y, X, k), memoised for the last plane ``key`` (row bands of one
        plane share them)."""
        from .classical import whole_plane_features

        memo = self._context_memo
        if key is not None and memo is not None and memo[0] == key and channel in memo[1]:
            return memo[1][channel]
        ctx = whole_plane_features(plane if plane.ndim == 2 else plane[:, :, channel], self.config.families)
        if key is not None:
            if memo is None or memo[0] != key:
                memo = (key, {})
                self._context_memo = memo
            memo[1][channel] = ctx
        return ctx

    def _guide(self, plane, key=None) -> np.ndarray:
        """Grey guide image in [0, 1] for the guided filter (memoised per plane key, so the
        whole-plane intensity percentiles are computed once, not once per row band)."""
        from .vit import to_rgb01

        if key is not None and self._guide_memo[0] == key:
            return self._guide_memo[1]
        chans = None if plane.ndim == 2 else self._vit_channels(plane.shape[-1])
        # the guide is percentile-scaled whatever config.intensity says: guided_eps is set
        # for a guide spanning [0, 1]
        guide = to_rgb01(plane if chans is None else plane[..., chans], intensity="percentile")
        guide = guide[..., 0] if chans is None or len(chans) == 1 else guide.mean(axis=-1)
        if key is not None:
            self._guide_memo = (key, guide)
        return guide

    def _vit_band(self, plane, y0, y1, key=None, progress=None, dtype=None) -> np.ndarray:
        from .upsample import upsample_bilinear, upsample_guided

        cfg = self.config
        p = self.backbone.patch_size
        tokens = self.vit_tokens(plane, key=key, progress=progress, dtype=dtype)
        gh, gw, _ = tokens.shape
        ny, nx = plane.shape[:2]
        m = self._vit_margin_tokens(p)
        t0, t1 = max(0, y0 // p - m), min(gh, -(-y1 // p) + m)
        py0, py1 = t0 * p, min(ny, t1 * p)
        # tokens span [p*t0, p*t1) exactly; crop to the image so that borders are treated as
        # in vit_features (guided filter reflecting at the true image edge)
        band = upsample_bilinear(tokens[t0:t1], ((t1 - t0) * p, gw * p))[: py1 - py0, :nx]
        if cfg.upsample == "guided":
            guide = self._guide(plane, key)
            band = upsample_guided(band, guide[py0:py1], radius=cfg.guided_radius, eps=cfg.guided_eps,
                                   already_upsampled=True)
        return band[y0 - py0:y1 - py0]
