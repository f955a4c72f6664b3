"""A sparse index of the labelled pixels of scribbles, so that training costs what was painted.

Scribbles are sparse: a few strokes per class on an image or a stack of thousands of planes.
:class:`ScribbleIndex` keeps, per plane, only the flat positions and class ids of the labelled
pixels. It is built by scanning the scribbles once, plane by plane (a lazy dask / zarr array
is read one plane at a time), and then kept up to date from the edited region only (napari's
``labels_update`` / ``paint`` events name the changed slice). Class counts, the planes to
train on and a content digest all come from the index, in time proportional to the labelled
pixels, never to the stack; :meth:`~napari_vitseg.pipeline.Segmenter.iter_fit` reads only the
planes that hold scribbles.

Examples
--------
>>> import numpy as np
>>> labels = np.zeros((3, 4, 5), np.uint8)
>>> labels[1, 0, :2] = 1
>>> labels[1, 3, 4] = 2
>>> index = ScribbleIndex.from_array(labels)
>>> index.planes, index.class_counts()
([1], {1: 2, 2: 1})
>>> index.update((1, slice(0, 1), slice(0, 5)), np.zeros((1, 5), np.uint8))  # erase row 0
>>> index.class_counts()
{2: 1}
"""

from __future__ import annotations

import hashlib

import numpy as np

from .._validation import VitsegError, as_array

__all__ = ["ScribbleIndex"]

#: Largest class id (labels are stored as uint8).
MAX_CLASS_ID = 255


def _plane_labels(values, name: str) -> np.ndarray:
    """``values`` as a non-negative integer numpy array (float input must hold integers)."""
    a = np.asarray(values)
    if a.dtype.kind not in "biu":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise VitsegError(
                f"{name} must hold integer class ids (0 = unlabelled, 1..K = classes); got dtype {a.dtype}."
            )
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise VitsegError(f"{name} contains negative values; use 0 for unlabelled and 1..K for classes.")
    return a


class ScribbleIndex:
    """Positions and class ids of the labelled pixels of a scribbles array, per plane.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the scribbles: (Y, X) or (Z, Y, X).
    name : str
        Name of the scribbles in error messages.

    Attributes
    ----------
    shape : tuple of int
    planes : list of int
        Planes (``0`` for a 2D image) that hold at least one labelled pixel, ascending.

    Notes
    -----
    Memory: 5 bytes per labelled pixel (int32 flat position + uint8 class id), nothing for
    unlabelled pixels. Class ids must be 1..255.
    """

    def __init__(self, shape: tuple[int, ...], name: str = "scribbles"):
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3):
            raise VitsegError(f"{name} must be 2D (Y, X) or 3D (Z, Y, X); got shape {shape}.")
        self.shape = shape
        self.name = name
        self._pos: dict[int, np.ndarray] = {}  # plane -> sorted flat positions (int32/int64)
        self._lab: dict[int, np.ndarray] = {}  # plane -> class ids (uint8), same order

    # -- building -----------------------------------------------------------------------
    @classmethod
    def from_array(cls, scribbles, spatial_shape: tuple[int, ...] | None = None,
                   name: str = "scribbles") -> ScribbleIndex:
        """Index a scribbles array, reading one plane at a time.

        Parameters
        ----------
        scribbles : array-like of int, (Y, X) or (Z, Y, X)
            numpy, dask or zarr; 0 = unlabelled, 1..K = classes.
        spatial_shape : tuple of int, optional
            The image's spatial shape; the scribbles must have it.
        name : str

        Returns
        -------
        ScribbleIndex

        Raises
        ------
        VitsegError
            Wrong shape or dtype, negative values, or class ids above 255.
        """
        if not hasattr(scribbles, "shape") or not hasattr(scribbles, "dtype"):
            scribbles = as_array(scribbles, "scribbles")
        shape = tuple(int(s) for s in scribbles.shape)
        if spatial_shape is not None and shape != tuple(spatial_shape):
            raise VitsegError(
                f"{name} has shape {shape} but the image's spatial shape is {tuple(spatial_shape)}; paint "
                "the scribbles on the same image (same shape, channel axis excluded)."
            )
        index = cls(shape, name)
        if len(shape) == 2:
            index._set_plane(0, _plane_labels(scribbles, name))
        else:
            for z in range(shape[0]):
                index._set_plane(z, _plane_labels(scribbles[z], name))
        return index

    def _plane_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def _set_plane(self, z: int, plane: np.ndarray) -> None:
        flat = plane.reshape(-1)
        pos = np.flatnonzero(flat)
        if pos.size == 0:
            self._pos.pop(z, None)
            self._lab.pop(z, None)
            return
        lab = flat[pos]
        self._check_ids(lab)
        self._pos[z] = pos.astype(np.int64 if flat.size > 2**31 - 1 else np.int32)
        self._lab[z] = lab.astype(np.uint8)

    def _check_ids(self, lab: np.ndarray) -> None:
        hi = int(lab.max()) if lab.size else 0
        if hi > MAX_CLASS_ID:
            raise VitsegError(
                f"{self.name} use class id {hi}; class ids must be 1..{MAX_CLASS_ID} (0 = unlabelled)."
            )

    def update(self, region: tuple, values) -> None:
        """Replace the labels of a rectangular region (one plane, or a box of planes).

        Parameters
        ----------
        region : tuple of slice or int
            Index of the region in the scribbles, e.g. ``(z, slice(y0, y1), slice(x0, x1))``
            or ``(slice(z0, z1), slice(...), slice(...))``; steps must be 1.
        values : array-like of int
            The region's new labels (all of them, zeros included), shaped like the region.

        Raises
        ------
        VitsegError
            Values of the wrong shape or dtype, negative values, class ids above 255.
        """
        region = tuple(region) + (slice(None),) * (len(self.shape) - len(tuple(region)))
        if len(region) != len(self.shape):
            raise VitsegError(f"region {region} does not fit {self.name} of shape {self.shape}.")
        bounds = []
        for sl, n in zip(region, self.shape, strict=True):
            if isinstance(sl, (int, np.integer)):
                z = int(sl) % n
                bounds.append((z, z + 1, True))
            else:
                start, stop, step = sl.indices(n)
                if step != 1:
                    raise VitsegError("scribble regions must be contiguous (step 1).")
                bounds.append((start, max(start, stop), False))
        values = _plane_labels(values, self.name)
        shape = tuple(b - a for a, b, squeeze in bounds if not squeeze)
        if values.shape != shape:
            raise VitsegError(f"{len(shape)}-D values of shape {values.shape} for a region of shape {shape}.")
        (y0, y1, _), (x0, x1, _) = bounds[-2], bounds[-1]
        if len(self.shape) == 2:
            zs, vals = [0], values[None]
        else:
            z0, z1, squeeze = bounds[0]
            zs = range(z0, z1)
            vals = values[None] if squeeze else values
        ny, nx = self._plane_shape()
        for z, v in zip(zs, vals, strict=True):
            v = v.reshape(y1 - y0, x1 - x0)
            pos, lab = self._pos.get(z), self._lab.get(z)
            if pos is not None:
                r, c = np.divmod(pos, nx)
                keep = ~((r >= y0) & (r < y1) & (c >= x0) & (c < x1))
                pos, lab = pos[keep], lab[keep]
            nz_r, nz_c = np.nonzero(v)
            new_lab = v[nz_r, nz_c]
            self._check_ids(new_lab)
            new_pos = (nz_r + y0).astype(np.int64) * nx + (nz_c + x0)
            if pos is not None and pos.size:
                new_pos = np.concatenate([pos.astype(np.int64), new_pos])
                new_lab = np.concatenate([lab, new_lab.astype(np.uint8)])
            if new_pos.size == 0:
                self._pos.pop(z, None)
                self._lab.pop(z, None)
                continue
            order = np.argsort(new_pos, kind="stable")
            self._pos[z] = new_pos[order].astype(np.int64 if ny * nx > 2**31 - 1 else np.int32)
            self._lab[z] = new_lab[order].astype(np.uint8)

    def copy(self) -> ScribbleIndex:
        """An independent snapshot in O(planes) (for a job while the user keeps painting).

        :meth:`update` replaces a plane's arrays and never writes into them, so the copy can
        share them.
        """
        new = ScribbleIndex(self.shape, self.name)
        new._pos = dict(self._pos)
        new._lab = dict(self._lab)
        return new

    # -- queries ------------------------------------------------------------------------
    @property
    def planes(self) -> list[int]:
        return sorted(self._pos)

    def plane(self, z: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labelled pixels of plane ``z``: (rows, cols, class ids), in row-major order."""
        pos = self._pos.get(z)
        if pos is None:
            return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.uint8)
        rows, cols = np.divmod(pos.astype(np.intp), self._plane_shape()[1])
        return rows, cols, self._lab[z]

    def class_counts(self) -> dict[int, int]:
        """Labelled pixels per class id, ascending ids."""
        total = np.zeros(MAX_CLASS_ID + 1, np.int64)
        for lab in self._lab.values():
            total += np.bincount(lab, minlength=MAX_CLASS_ID + 1)
        return {int(c): int(total[c]) for c in np.flatnonzero(total)}

    def classes(self) -> list[int]:
        """Class ids that have labelled pixels."""
        return list(self.class_counts())

    @property
    def n_labelled(self) -> int:
        """Number of labelled pixels."""
        return int(sum(p.size for p in self._pos.values()))

    @property
    def nbytes(self) -> int:
        """Memory held by the index."""
        return int(sum(p.nbytes + lab.nbytes for p, lab in zip(self._pos.values(), self._lab.values(), strict=True)))

    def digest(self) -> str:
        """Content hash of the labelled pixels (shape, positions and ids; BLAKE2b, 16 bytes, hex).

        Equal for two scribbles arrays with the same labelled pixels, whatever their dtype.
        """
        h = hashlib.blake2b(digest_size=16)
        h.update(str(self.shape).encode())
        for z in self.planes:
            h.update(int(z).to_bytes(8, "little"))
            h.update(self._pos[z].astype(np.int64).tobytes())
            h.update(self._lab[z].tobytes())
        return h.hexdigest()

    def check_trainable(self) -> list[int]:
        """The classes, after checking that there are at least two.

        Raises
        ------
        VitsegError
            No labelled pixels, or a single class.
        """
        classes = self.classes()
        if not classes:
            raise VitsegError(
                f"{self.name} contain no labelled pixels; paint at least one stroke for each of two classes."
            )
        if len(classes) == 1:
            raise VitsegError(
                f"{self.name} contain a single class ({classes[0]}); paint strokes for at least two classes."
            )
        return classes

    def to_array(self, dtype=np.uint8) -> np.ndarray:
        """The dense scribbles (for small images and tests)."""
        out = np.zeros(self.shape, dtype)
        for z in self.planes:
            r, c, lab = self.plane(z)
            if len(self.shape) == 2:
                out[r, c] = lab
            else:
                out[z, r, c] = lab
        return out

    def __repr__(self) -> str:
        return f"ScribbleIndex(shape={self.shape}, planes={len(self._pos)}, labelled={self.n_labelled})"
