"""Headless state and jobs of the segmentation widget (no Qt, no napari).

:class:`SegmentationController` holds what the widget's fields describe (feature config,
classifier and its parameters, class names and colours), one feature cache shared by every
classifier it trains, the current model, and a :class:`~napari_vitseg.pipeline.scribbles.ScribbleIndex`
of the scribbles layer. Its jobs are generators, like the library's: they yield
:class:`~napari_vitseg._progress.Progress`, :class:`ModelReady` (a newly trained or loaded
model) and :class:`PlaneUpdate` (a prediction of one plane, or of a band of its rows, to
display), and return their result. The widget runs them in ``thread_worker`` and only draws
what they yield; the tests and ``benchmarks/bench_live.py`` can run the same jobs without a
viewer.

Scribbles
---------
The scribbles are never scanned nor copied by a job. The controller keeps a sparse index of
the labelled pixels, built once when a scribbles layer is picked (plane by plane) and updated
from the edited regions only (:meth:`SegmentationController.update_scribbles`, fed by the
widget from napari's ``paint`` events and the undo / redo history, see :func:`history_regions`).
A job receives a snapshot of the index (a copy of the labelled pixels, taken on the UI
thread); class lists, the live digest (no retraining when nothing changed) and every check
come from it, and training reads only the image planes that hold scribbles. So a stroke costs
what was painted, not the size of the stack.

Live mode
---------
Live retraining uses a small random forest (:data:`LIVE_PARAMS`: 16 trees of depth <= 10,
at most 1,000 labelled pixels per class, drawn at random). On a 1024 x 1024 plane with cached
classical features it fits in ~0.15-0.3 s and predicts in ~0.4-0.8 s on 2 busy CPU cores,
against ~4 s for the default 100 full-depth trees; on the TEM nanoparticle sample it scores
the same mIoU (0.94) as the full model. Planes above :data:`COARSE_PIXELS` are first predicted
on every second row and column (a quarter of the pixels) and shown upsampled at once, then
refined at full resolution; planes above :data:`TILE_PIXELS` are predicted in row bands of
about :data:`BAND_PIXELS`, the bands in view first. The full-quality model (the classifier
fields) is trained by *Train*, and by *Save*, *Apply to stack* and *Apply to files* when the
current model is a live preview.

Memory
------
What the controller keeps has a byte budget: the feature cache (LRU, ``cache_bytes``) and the
raw planes of a lazy stack (LRU, :data:`PLANE_CACHE_BYTES`). Before *Train*, *Apply to stack*
and each live retrain, :meth:`SegmentationController.check_memory` adds up what the job will
hold (:meth:`~SegmentationController.memory_estimate`: image plane, features, training
matrix, classifier, probabilities, output layers in memory) and refuses, pointing at *Apply to
files…*, when it would not fit in the available memory (:func:`available_memory`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._progress import Progress
from .._validation import VitsegError
from ..features.config import FeatureConfig
from ..pipeline import DEFAULT_COLORS, Segmenter, SegmenterConfig, as_channels_last, uncertainty
from ..pipeline.batch import iter_apply_files
from ..pipeline.scribbles import ScribbleIndex
from ..pipeline.segmenter import plane_of

__all__ = [
    "BAND_PIXELS",
    "COARSE_PIXELS",
    "LIVE_PARAMS",
    "MEMORY_FRACTION",
    "PLANE_CACHE_BYTES",
    "RANDOM_WEIGHTS_ENV",
    "TILE_PIXELS",
    "WIDGET_CACHE_BYTES",
    "JobInputs",
    "ModelReady",
    "PlaneUpdate",
    "SegmentationController",
    "Status",
    "RGB_CLASS_COLORS",
    "available_memory",
    "carry_scribbles",
    "guess_channel_axis",
    "history_regions",
    "stack_channels",
    "row_bands",
    "suggest_region",
    "uncertainty_u8",
]

#: Classifier parameters of the live preview model, per classifier kind.
LIVE_PARAMS = {
    "rf": {"n_estimators": 16, "max_depth": 10, "max_samples_per_class": 1000},
    "xgb": {"n_estimators": 20, "max_depth": 4, "max_samples_per_class": 1000},
}
#: Live predictions of planes with more pixels than this show a stride-2 preview first.
COARSE_PIXELS = 600_000
#: Planes with more pixels than this are predicted in row bands, the rows in view first.
TILE_PIXELS = 4 * 2**20
#: Pixels of one row band of such planes (its features are cached by band).
BAND_PIXELS = 2**20
#: Byte budget of the widget's feature cache: 3 planes of 1024 x 1024 with 40 classical
#: features (two planes with scribbles and the plane in view), so that napari, torch and the
#: widget stay within ~1.5 GB whatever the size of the stack.
WIDGET_CACHE_BYTES = 512 * 2**20
#: Byte budget of the raw planes of a lazy (dask / zarr) grey stack kept between jobs (LRU): the
#: planes with scribbles and the plane in view are read from disk once, not at every stroke.
PLANE_CACHE_BYTES = 64 * 2**20
#: A job may plan to use at most this fraction of the available memory.
MEMORY_FRACTION = 0.8
#: Environment variable that lets the widget build backbones with random weights (testing only).
RANDOM_WEIGHTS_ENV = "VITSEG_ALLOW_RANDOM_WEIGHTS"


def random_weights_allowed() -> bool:
    """Whether ``VITSEG_ALLOW_RANDOM_WEIGHTS=1`` is set."""
    return os.environ.get(RANDOM_WEIGHTS_ENV, "") == "1"


def available_memory() -> int | None:
    """Bytes of memory available to a new job (psutil, else ``/proc/meminfo``), or ``None``."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


#: Largest last axis that :func:`guess_channel_axis` takes for channels.
MAX_GUESSED_CHANNELS = 8
#: Largest first axis that :func:`guess_channel_axis` takes for channels: a first axis of 4..8
#: is as often a short z-stack (the 6-plane TEM sample, 4-plane test stacks) as channels, and a
#: wrong guess there would hide planes; 2 or 3 channels first is the usual fluorescence layout
#: (CYX). The guess is shown for the user to confirm either way.
MAX_GUESSED_FIRST = 3
#: Class colours on colour (RGB) images: saturated cyan, yellow, lime, blue, red, violet... that
#: stand out of stained tissue (pink / purple), etched metals (brown / grey) and optical
#: micrographs; grey images keep :data:`~napari_vitseg.pipeline.DEFAULT_COLORS` (matplotlib's
#: tab10, distinct on grey and the colours of the saved classifier files).
RGB_CLASS_COLORS = ("#00e5ff", "#ffea00", "#76ff03", "#2962ff", "#ff1744", "#d500f9", "#ff9100", "#ffffff",
                    "#00bfa5", "#f50057")


def guess_channel_axis(shape: Sequence[int], metadata: dict | None = None) -> tuple[int | None, str]:
    """Guess which axis of an image holds channels, whatever reader opened it.

    In order: the reader's ``channel_axis`` (napari-vitseg's reader), an axes string in the
    metadata (``'axes'``, ImageJ / OME / tifffile style, e.g. ``'CYX'``, ``'ZYXC'``, ``'YXS'``:
    the ``C`` or ``S`` axis), then the shape: a last axis of at most :data:`MAX_GUESSED_CHANNELS`
    or a first axis of at most :data:`MAX_GUESSED_FIRST` values on a 3D / 4D image, much shorter
    than the image's sides (napari's builtin reader gives ``(Y, X, 2)`` TIFFs and ``(C, Y, X)``
    files as such arrays). The widget shows the guess and its reason for the user to confirm.

    Parameters
    ----------
    shape : sequence of int
        The layer's data shape (not RGB).
    metadata : dict, optional
        The layer's metadata.

    Returns
    -------
    axis : int or None
        ``None``: no channel axis (a grey image or a stack of planes).
    reason : str
        Why, for the user to confirm (empty when there is nothing to say).
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    md = metadata or {}
    ca = md.get("channel_axis")
    axes = md.get("axes")
    if isinstance(ca, (int, np.integer)) and not isinstance(ca, bool) and -nd <= ca < nd:
        return int(ca) % nd, "from the file's metadata"
    if isinstance(axes, str) and len(axes) == nd:
        up = axes.upper()
        for letter in "CS":
            if letter in up and shape[up.index(letter)] > 1:
                return up.index(letter), f"from the file's axes {axes!r}"
        return None, f"no channel axis in the file's axes {axes!r}"
    if nd < 3 or nd > 4:
        return None, ""
    if 1 < shape[-1] <= MAX_GUESSED_CHANNELS and min(shape[-3:-1]) > 4 * shape[-1]:
        return nd - 1, f"guessed: the last axis has {shape[-1]} values — set 'none' if these are not channels"
    if 1 < shape[0] <= MAX_GUESSED_FIRST and min(shape[-2:]) > 4 * shape[0]:
        return 0, (f"guessed: the first axis has {shape[0]} values — set 'none' if it is a stack of "
                   f"{shape[0]} planes")
    return None, ""


def suggest_region(uncertainty_plane, *, window: int = 64, labelled=None) -> tuple[int, int, float] | None:
    """Where to paint next: the centre of the most uncertain ``window`` x ``window`` region.

    The uncertainty (1 - max class probability) is averaged over a sliding window
    (``scipy.ndimage.uniform_filter``) and its maximum taken, after zeroing the labelled
    pixels (they are known already), as ilastik's "uncertainty" view suggests by eye.

    Parameters
    ----------
    uncertainty_plane : ndarray, (Y, X)
        uint8 (0..255) or float (0..1) uncertainty of the plane in view.
    window : int
        Side of the region, in pixels (clipped to the plane).
    labelled : ndarray of bool, (Y, X), optional
        Pixels that have scribbles.

    Returns
    -------
    (y, x, mean) or None
        The region's centre (pixel indices) and its mean uncertainty in 0..1; ``None`` when the
        plane holds no uncertainty at all (nothing predicted yet).
    """
    from scipy import ndimage as ndi

    u = np.asarray(uncertainty_plane, dtype=np.float32)
    if u.ndim != 2 or not u.size:
        return None
    if np.asarray(uncertainty_plane).dtype == np.uint8:
        u = u / 255.0
    if labelled is not None:
        u = np.where(np.asarray(labelled, bool), 0.0, u)
    if not np.any(u > 0):
        return None
    w = max(1, min(int(window), *u.shape))
    mean = ndi.uniform_filter(u, size=w, mode="constant")
    y, x = np.unravel_index(int(np.argmax(mean)), mean.shape)
    return int(y), int(x), float(mean[y, x])


def carry_scribbles(data, image_shape: Sequence[int], old_axis: int | None, new_axis: int | None):
    """Scribbles painted with one channel axis, in the geometry of another one.

    Parameters
    ----------
    data : array-like of int
        The scribbles, of the image's spatial shape under ``old_axis``.
    image_shape : sequence of int
        The image layer's data shape.
    old_axis, new_axis : int or None
        Channel axes before and after.

    Returns
    -------
    ndarray or None
        No channel axis -> axis ``k``: the planes along ``k`` (which were channels) are merged,
        the largest label winning where strokes overlap. Axis ``k`` -> none: the scribbles are
        repeated along ``k``. ``None`` when the change is of another kind (one axis for
        another); the caller then keeps the layer as it is.
    """
    image_shape = tuple(int(n) for n in image_shape)
    if old_axis == new_axis:
        return None
    a = np.asarray(data)
    if old_axis is None and new_axis is not None and a.shape == image_shape:
        return a.max(axis=new_axis)
    if new_axis is not None or old_axis is None:
        return None
    want = image_shape
    if a.shape != want[:old_axis] + want[old_axis + 1:]:
        return None
    return np.ascontiguousarray(np.broadcast_to(np.expand_dims(a, old_axis), want))


def uncertainty_u8(proba: np.ndarray) -> np.ndarray:
    """Uncertainty (1 - max probability) as uint8: 0..255 stands for 0..1."""
    return np.clip(np.rint(uncertainty(proba) * 255), 0, 255).astype(np.uint8)


def history_regions(items) -> list[tuple] | None:
    """The regions that napari Labels history items changed (bounding boxes).

    Parameters
    ----------
    items : iterable of list
        History items: lists of atoms, each a ``_MaskedPaintAtom`` (its ``slice_key``, a
        tuple of slices, is the region) or a ``(indices, old, new)`` tuple of
        ``data_setitem`` (the bounding box of ``indices`` is the region). This is what
        napari's ``paint`` event carries as ``value`` and what undo / redo move between the
        two history queues.

    Returns
    -------
    list of tuple of slice, or None
        ``None`` when an atom is of an unknown kind (the caller re-indexes the layer).
    """
    regions = []
    for item in items:
        for atom in item:
            key = getattr(atom, "slice_key", None)
            if key is not None:
                regions.append(tuple(key))
                continue
            if isinstance(atom, tuple) and len(atom) == 3:
                try:
                    idx = [np.asarray(a).ravel() for a in atom[0]]
                except TypeError:
                    return None
                if not idx or any(a.size == 0 for a in idx):
                    continue
                if any(a.dtype.kind not in "iu" for a in idx):
                    return None
                regions.append(tuple(slice(int(a.min()), int(a.max()) + 1) for a in idx))
                continue
            return None
    return regions


def _bounds(region: tuple, shape: tuple) -> tuple[tuple[int, int], ...] | None:
    """``((start, stop), ...)`` of a region in an array of ``shape``; ``None`` if empty or strided."""
    region = tuple(region) + (slice(None),) * (len(shape) - len(tuple(region)))
    if len(region) != len(shape):
        return None
    out = []
    for sl, n in zip(region, shape, strict=True):
        if isinstance(sl, (int, np.integer)):
            i = int(sl) % n
            out.append((i, i + 1))
            continue
        if not isinstance(sl, slice):
            return None
        a, b, step = sl.indices(n)
        if step != 1 or b <= a:
            return None
        out.append((a, b))
    return tuple(out)


def merge_regions(regions, shape: tuple, *, min_pixels: int = 2**20) -> list[tuple]:
    """Merge the regions of one edit (e.g. the dabs of a brush stroke) into few boxes.

    Boxes over the same planes are replaced by their union when it holds at most four times
    their pixels or ``min_pixels`` (reading it once is cheaper than many small reads).

    Returns
    -------
    list of tuple of slice
    """
    groups: dict = {}
    for region in regions:
        b = _bounds(region, shape)
        if b is not None:
            groups.setdefault(b[:-2], []).append(b[-2:])
    out = []
    for lead, boxes in groups.items():
        y0 = min(b[0][0] for b in boxes)
        y1 = max(b[0][1] for b in boxes)
        x0 = min(b[1][0] for b in boxes)
        x1 = max(b[1][1] for b in boxes)
        area = sum((b[0][1] - b[0][0]) * (b[1][1] - b[1][0]) for b in boxes)
        if (y1 - y0) * (x1 - x0) <= max(4 * area, min_pixels):
            boxes = [((y0, y1), (x0, x1))]
        for box in dict.fromkeys(boxes):
            out.append(tuple(slice(a, b) for a, b in (*lead, *box)))
    return out


def row_bands(ny: int, nx: int, view_rows: tuple[int, int] | None = None,
              band_pixels: int | None = None) -> list[tuple[int, int]]:
    """Row bands of a plane, those that overlap ``view_rows`` first, then by distance to the view.

    Bands are a fixed grid of about ``band_pixels`` pixels (default :data:`BAND_PIXELS`),
    so that their cached features are found again by the next prediction.
    """
    step = max(1, (band_pixels or BAND_PIXELS) // max(int(nx), 1))
    bands = [(y, min(ny, y + step)) for y in range(0, ny, step)]
    if view_rows is None:
        return bands
    v0, v1 = max(0, int(view_rows[0])), min(ny, int(view_rows[1]))
    if v1 <= v0:
        return bands
    seen = [b for b in bands if b[0] < v1 and b[1] > v0]
    mid = (v0 + v1) / 2
    rest = sorted((b for b in bands if not (b[0] < v1 and b[1] > v0)), key=lambda b: abs((b[0] + b[1]) / 2 - mid))
    return seen + rest


class CachedPlanes:
    """A lazy (Z, Y, X) array whose planes, read by integer index, are kept in an LRU cache.

    Only ``array[z]`` goes through the cache (read-only numpy planes); any other index and
    ``np.asarray`` go to the array itself. A live retrain reads the planes with scribbles and
    the plane in view at every stroke; from a dask array over a TIFF or zarr store each read
    goes to disk through dask's, zarr's and tifffile's threads (tens of ms per 1024 x 1024
    plane). With the cache, a stroke reads nothing.
    """

    def __init__(self, array, cache):
        self._array = array
        self._cache = cache
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            z = int(key) + (self.shape[0] if key < 0 else 0)
            plane = self._cache.get(z)
            if plane is None:
                plane = np.asarray(self._array[z])
                self._cache.put(z, plane)
                plane = self._cache.get(z) if z in self._cache else plane
            return plane
        return self._array[key]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._array, dtype=dtype)


@dataclass
class ModelReady:
    """Yielded by a job when it has a new model (trained or loaded)."""

    segmenter: Segmenter
    live: bool
    digest: str | None
    description: str
    loaded_from: str | None = None


@dataclass
class PlaneUpdate:
    """A prediction of one plane (or of a band of its rows) for the widget to display.

    Attributes
    ----------
    z : int or None
        Plane index of a stack, ``None`` for a 2D image.
    labels : ndarray, (Y, X) uint8
        Or (y1 - y0, X) for a band of ``rows``.
    uncertainty : ndarray, like ``labels``, uint8
        1 - max probability, 0..255 for 0..1 (:func:`uncertainty_u8`).
    probabilities : ndarray, (K, Y, X) float32, or None
    classes : ndarray of int, (K,)
    coarse : bool
        A stride-2 preview, to be replaced by the full-resolution prediction.
    rows : (int, int) or None
        The band of rows ``[y0, y1)`` this update covers; ``None`` for the whole plane.
    partial : bool
        More bands of this plane follow.
    """

    z: int | None
    labels: np.ndarray
    uncertainty: np.ndarray
    probabilities: np.ndarray | None
    classes: np.ndarray
    coarse: bool = False
    rows: tuple[int, int] | None = None
    partial: bool = False

    @property
    def complete(self) -> bool:
        """The last full-resolution update of its plane."""
        return not (self.coarse or self.partial)


@dataclass
class Status:
    """A message for the widget's status line (no error)."""

    msg: str


@dataclass
class JobInputs:
    """What a job needs from the viewer, captured on the UI thread when it starts.

    Attributes
    ----------
    image : array-like
        The image layer's data (numpy, dask or zarr; never copied), or the lazy channels-last
        stack of several image layers used as channels (:func:`stack_channels`).
    channel_axis : int or None
    scribbles : ScribbleIndex, array-like or None
        A snapshot of the controller's index (:meth:`SegmentationController.scribbles_snapshot`;
        what the widget passes), or an array that the job indexes plane by plane (headless use).
    z : int or None
        The plane in view.
    view_rows : (int, int) or None
        The rows of the plane in view (``[y0, y1)``), predicted first on planes above
        :data:`TILE_PIXELS`.
    probabilities : bool
    z_step : float or None
        The z step the image layer's scale declares (its voxel size, z spacing / pixel size),
        ``None`` when it declares none: ``spatial='auto'`` then estimates it from the pixels.
    extra : dict
    """

    image: object = None
    channel_axis: int | None = None
    scribbles: ScribbleIndex | np.ndarray | None = None
    z: int | None = None
    probabilities: bool = False
    view_rows: tuple[int, int] | None = None
    z_step: float | None = None
    extra: dict = field(default_factory=dict)


NO_SCRIBBLES = "There is no scribbles layer: press 'New scribbles layer' and paint some strokes."


def stack_channels(arrays: Sequence, names: Sequence[str] | None = None):
    """Several single-channel images of one shape as one channels-last image, without copying.

    napari shows a multichannel file as one image layer per channel (``viewer.open(path,
    channel_axis=0)``, readers that split channels); the widget segments such layers together
    by stacking them here: channel ``i`` is ``arrays[i]``, as in a ``(Y, X, C)`` or
    ``(Z, Y, X, C)`` image. The stack is a lazy :mod:`dask` array with one chunk per plane and
    channel (numpy data is wrapped, never copied; dask and zarr data stay on disk), so a job
    reads only the planes it segments, as from a single lazy layer.

    Parameters
    ----------
    arrays : sequence of array-like
        Two or more arrays (numpy, dask, zarr) of one shape, (Y, X) or (Z, Y, X); the result's
        dtype is their common type (``numpy.result_type``).
    names : sequence of str, optional
        The layers' names, for error messages.

    Returns
    -------
    dask.array.Array, (Y, X, C) or (Z, Y, X, C)

    Raises
    ------
    VitsegError
        Fewer than two arrays, shapes that differ, or not 2D / 3D.
    """
    import dask.array as da

    arrays = list(arrays)
    names = list(names) if names is not None else [f"channel {i}" for i in range(len(arrays))]
    if len(arrays) < 2:
        raise VitsegError(f"Combining image layers as channels needs two or more layers; got {len(arrays)}.")
    shape = tuple(int(n) for n in arrays[0].shape)
    for a, name in zip(arrays, names, strict=True):
        if tuple(int(n) for n in a.shape) != shape:
            raise VitsegError(f"The layer {name!r} has shape {tuple(a.shape)} but {names[0]!r} has {shape}: only "
                              "layers of one shape can be the channels of one image.")
    if len(shape) not in (2, 3):
        raise VitsegError(f"Layers of shape {shape} cannot be combined as channels: each must be a 2D image or a "
                          "3D stack (Y, X) or (Z, Y, X).")
    plane = (1,) * (len(shape) - 2) + shape[-2:]
    parts = [a if isinstance(a, da.Array) else da.from_array(a, chunks=plane, name=False) for a in arrays]
    return da.stack(parts, axis=-1)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


class SegmentationController:
    """State of the segmentation widget and its job generators.

    Parameters
    ----------
    cache_bytes : int
        Byte budget of the feature cache shared by every model trained here (LRU).

    Attributes
    ----------
    feature_config : FeatureConfig
    classifier : {'rf', 'xgb'}
    classifier_params : dict
        Parameters of the full-quality model (*Train*).
    live_fast : bool
        Live mode trains the small :data:`LIVE_PARAMS` model (default) instead of the full one.
    boundary_refinement : int
        Half-width (px) of the band a fine-scale classifier re-decides; 0 = off (see
        :class:`~napari_vitseg.pipeline.SegmenterConfig`).
    class_names, class_colors : list of str
        Names and hex colours of classes 1..K.
    random_weights : bool
        Build ViT backbones with random weights (only when :func:`random_weights_allowed`).
    model : ModelReady or None
        The current model.
    n_trainings : int
        Models trained so far (live and full).
    scribbles : ScribbleIndex or None
        The index of the scribbles layer (read-only; see :meth:`index_scribbles`).
    scribbles_error : str or None
        Why the scribbles layer could not be indexed (class ids above 255, float labels...).
    files_skipped : list of str
        Input names that the last :meth:`iter_apply_files` skipped (their outputs existed).
    """

    def __init__(self, cache_bytes: int = WIDGET_CACHE_BYTES):
        from ..features.cache import FeatureCache

        self.feature_config = FeatureConfig()
        self.classifier = "rf"
        self.classifier_params: dict = {}
        self.live_fast = True
        self.boundary_refinement = SegmenterConfig().boundary_refinement
        self.class_names: list[str] = ["class 1", "class 2"]
        self.class_colors: list[str] = list(DEFAULT_COLORS[:2])
        self.random_weights = False
        self.cache = FeatureCache(cache_bytes)
        self.cache_bytes = int(cache_bytes)
        self.model: ModelReady | None = None
        self.n_trainings = 0
        self.scribbles_error: str | None = None
        self.files_skipped: list[str] = []
        self._index: ScribbleIndex | None = None
        self.planes = FeatureCache(PLANE_CACHE_BYTES)
        self._planes_of = None
        self._featurizer = None
        self._backbones: dict = {}
        self._z_estimate = (None, None, None)  # (image, channel axis, estimated z step) for spatial='auto'

    # -- scribbles (UI thread) ------------------------------------------------------------
    @property
    def scribbles(self) -> ScribbleIndex | None:
        return self._index

    def index_scribbles(self, data, *, empty: bool = False, name: str = "scribbles") -> ScribbleIndex:
        """Index a scribbles array plane by plane (once, when the layer is picked or replaced).

        Parameters
        ----------
        data : array-like, (Y, X) or (Z, Y, X)
            The layer's data (numpy, dask, zarr); read one plane at a time, never copied.
        empty : bool
            The array is known to hold zeros only (a new layer): nothing is read.
        name : str
            The layer's name, for error messages.

        Raises
        ------
        VitsegError
            Not 2D / 3D, not integer, negative values or class ids above 255 (also kept in
            :attr:`scribbles_error`; the index is then ``None``).
        """
        self._index = None
        self.scribbles_error = None
        try:
            if empty:
                index = ScribbleIndex(tuple(data.shape), name=name)
            else:
                index = ScribbleIndex.from_array(data, name=name)
        except VitsegError as e:
            self.scribbles_error = str(e)
            raise
        self._index = index
        return index

    def update_scribbles(self, regions, read: Callable[[tuple], object]) -> None:
        """Re-read edited regions of the scribbles into the index.

        Parameters
        ----------
        regions : iterable of tuple of slice
            Boxes that changed (see :func:`history_regions`); merged per plane first.
        read : callable ``(region) -> array``
            The layer's values in a region (``lambda r: layer.data[r]``).

        Raises
        ------
        VitsegError
            Invalid values (the index is dropped, see :meth:`index_scribbles`).
        """
        index = self._index
        if index is None:
            return
        try:
            for region in merge_regions(regions, index.shape):
                index.update(region, np.asarray(read(region)))
        except VitsegError as e:
            self._index = None
            self.scribbles_error = str(e)
            raise

    def forget_scribbles(self) -> None:
        """No scribbles layer."""
        self._index = None
        self.scribbles_error = None

    def scribbles_snapshot(self) -> ScribbleIndex | None:
        """A copy of the index for a job (O(labelled pixels)); later strokes do not change it."""
        return self._index.copy() if self._index is not None else None

    @staticmethod
    def _index_of(inputs: JobInputs) -> ScribbleIndex:
        s = inputs.scribbles
        if s is None:
            raise VitsegError(NO_SCRIBBLES)
        return s if isinstance(s, ScribbleIndex) else ScribbleIndex.from_array(s)

    def _image(self, inputs: JobInputs):
        """The job's image, through the plane cache when it is a lazy grey stack."""
        image = inputs.image
        if image is None or isinstance(image, np.ndarray) or inputs.channel_axis is not None \
                or getattr(image, "ndim", 0) != 3:
            return image
        if image is not self._planes_of:  # another image: its planes are other planes
            self.planes.clear()
            self._planes_of = image
        return CachedPlanes(image, self.planes)

    # -- memory ---------------------------------------------------------------------------
    def _classifier_bytes(self, params: dict, n_samples: int, k: int) -> int:
        """Upper estimate of a fitted classifier's size (tree nodes)."""
        from ..classifiers import make_classifier

        p = make_classifier(self.classifier, **params).get_params()
        cap = p.get("max_samples_per_class")
        n = min(n_samples, cap * k) if cap else n_samples
        trees = int(p.get("n_estimators") or 100)
        depth = p.get("max_depth")
        leaf = int(p.get("min_samples_leaf") or 1)
        nodes = 2 * max(1, n // leaf)
        if depth:
            nodes = min(nodes, 2 ** (int(depth) + 1))
        return trees * nodes * (64 + 8 * k)

    def memory_estimate(self, kind: str, inputs: JobInputs, *, outputs_bytes: int = 0) -> dict[str, int]:
        """Bytes that a job will hold at its peak, by item.

        Parameters
        ----------
        kind : {'train', 'live', 'apply'}
            *Train* (full model, then the plane in view), a live retrain, or *Apply to stack*
            (a full model is trained first when the current one is a live preview or missing).
        inputs : JobInputs
        outputs_bytes : int
            Bytes of output layers that the job will allocate in memory (the widget knows
            whether its outputs are numpy arrays or on-disk stores).

        Returns
        -------
        dict
            ``{item: bytes}``: the image plane, the features of a plane, the feature cache
            growth, the training matrix, the classifier, the prediction of a plane, the
            output layers.
        """
        from ..features.stack import Featurizer

        img, nsp, nc = as_channels_last(inputs.image, inputs.channel_axis)
        ny, nx = (int(n) for n in img.shape[nsp - 2:nsp])
        px = ny * nx
        fz = Featurizer(self.feature_config)
        nf = fz.n_features(nc)
        feat_plane = px * nf * 4
        parts = {"image plane": px * nc * (img.dtype.itemsize + 4)}
        cur = self.model
        train = kind in ("train", "live") or (kind == "apply" and (cur is None or cur.live))
        k = len(cur.segmenter.classes_) if cur is not None and not train else 2
        if train and inputs.scribbles is not None:
            index = self._index_of(inputs)
            n = index.n_labelled
            k = max(2, len(index.classes()))
            params = self.live_params() if kind == "live" else dict(self.classifier_params)
            cacheable = feat_plane <= self.cache.max_bytes
            planes = len(index.planes) + (kind != "apply")
            grow = min(self.cache.max_bytes, planes * feat_plane) - self.cache.nbytes if cacheable else 0
            parts["features of a plane"] = 0 if cacheable else feat_plane
            parts["feature cache"] = max(0, grow)
            parts["training matrix"] = 3 * n * nf * 4 + 9 * n
            parts["classifier"] = self._classifier_bytes(params, n, k)
        if kind == "apply":
            strip = min(feat_plane, fz.strip_bytes)
            parts["features of a plane"] = max(parts.get("features of a plane", 0), strip)
        elif px > TILE_PIXELS:
            parts["features of a plane"] = max(parts.get("features of a plane", 0), BAND_PIXELS * nf * 4)
        chunk = min(px, 1 << 22)  # Segmenter.predict_plane predicts ~4M pixels at a time
        parts["prediction of a plane"] = px * k * 4 * (2 if inputs.probabilities else 1) + 2 * chunk * k * 8 + 3 * px
        parts["output layers"] = int(outputs_bytes)
        return parts

    def check_memory(self, kind: str, inputs: JobInputs, *, outputs_bytes: int = 0,
                     available: int | None = None) -> dict[str, int]:
        """Refuse a job that would not fit in memory (see :meth:`memory_estimate`).

        Parameters
        ----------
        kind, inputs, outputs_bytes
            As :meth:`memory_estimate`.
        available : int, optional
            Bytes available (default :func:`available_memory`; no check when unknown).

        Returns
        -------
        dict
            The estimate.

        Raises
        ------
        VitsegError
            The estimate exceeds :data:`MEMORY_FRACTION` of the available memory; the message
            names the largest items and points at *Apply to files…*.
        """
        parts = self.memory_estimate(kind, inputs, outputs_bytes=outputs_bytes)
        avail = available_memory() if available is None else available
        total = sum(parts.values())
        if avail is None or total <= MEMORY_FRACTION * avail:
            return parts
        top = sorted(((v, k) for k, v in parts.items() if v), reverse=True)[:3]
        what = ", ".join(f"{k} {_gib(v)}" for v, k in top)
        job = {"train": "Training", "live": "Live training", "apply": "Segmenting the whole stack in napari"}[kind]
        advice = ("use 'Apply to files…', which streams the segmentation to disk plane by plane with bounded "
                  "memory" if kind == "apply" else
                  "erase some scribbles or use fewer features (scales, ViT PCA); to segment the stack, use "
                  "'Apply to files…', which streams it to disk plane by plane")
        raise VitsegError(f"{job} needs about {_gib(total)} of memory ({what}) but only {_gib(avail)} is available: "
                          f"{advice}.")

    # -- models ---------------------------------------------------------------------
    def live_params(self) -> dict:
        """Classifier parameters of a live model."""
        if not self.live_fast:
            return dict(self.classifier_params)
        p = dict(self.classifier_params)
        p.update(LIVE_PARAMS[self.classifier])
        for key in ("n_estimators", "max_depth"):
            user = self.classifier_params.get(key)
            if user is not None and user < p[key]:
                p[key] = user
        return p

    def _boundary_rows(self, live: bool) -> int:
        """Boundary refinement of the model ``new_segmenter(live)`` builds: none for the fast live
        preview (its second forest doubled the full-resolution overlay time, bench_live), else
        :attr:`boundary_refinement`."""
        return 0 if live and self.live_fast else self.boundary_refinement

    def training_features(self, inputs: JobInputs | None = None) -> FeatureConfig:
        """The feature config of a model to be trained on ``inputs``: :attr:`feature_config`, with
        ``spatial='auto'`` made concrete for a stack
        (:func:`~napari_vitseg.features.volume.resolve_spatial`; its z step estimated once per
        image and channel axis, from the planes then scribbled and one neighbour each, not per
        stroke; a z step the layer's scale declares, ``inputs.z_step``, is taken as it is). A
        single image keeps 'auto' (its 2D channels);
        :meth:`Segmenter.fit <napari_vitseg.Segmenter.fit>` records '2d'."""
        cfg = self.feature_config
        if cfg.spatial != "auto" or inputs is None or inputs.image is None:
            return cfg
        from ..features.volume import estimate_z_anisotropy, resolve_spatial

        img, nsp, _ = as_channels_last(self._image(inputs), inputs.channel_axis)
        if nsp != 3:
            return cfg  # 2D: the featurizer of 'auto' computes the 2D channels (and stays shared)
        if inputs.z_step is not None:
            return resolve_spatial(cfg, img, nsp, z_step=inputs.z_step)
        image, axis, a = self._z_estimate
        if image is not inputs.image or axis != inputs.channel_axis:
            planes = self._index_of(inputs).planes if inputs.scribbles is not None else None
            a = estimate_z_anisotropy(img, planes)
            self._z_estimate = (inputs.image, inputs.channel_axis, a)
        return resolve_spatial(cfg, img, nsp, estimate=a)

    def describe(self, live: bool, features: FeatureConfig | None = None, stack: bool = False,
                 z_declared: bool = False) -> str:
        """Short description of the model that ``new_segmenter(live)`` builds (``features``: its
        feature config, for a stack (``stack``) named with how its filters treat the planes and,
        for ``spatial='auto'``, whether the layer's voxel size (``z_declared``) or the pixels
        chose them)."""
        p = self.live_params() if live else self.classifier_params
        kind = {"rf": "random forest", "xgb": "XGBoost"}[self.classifier]
        n = p.get("n_estimators", 100)
        depth = p.get("max_depth", None if self.classifier == "rf" else 6)
        what = "live preview" if live and self.live_fast else "full model"
        cap = p.get("max_samples_per_class", self._default_cap())
        per_class = f", at most {cap:,} labelled pixels per class" if cap else ""
        refine = ", boundaries refined" if self._boundary_rows(live) else (
            ", boundaries not refined (Train refines them)" if self.boundary_refinement else "")
        planes = ""
        if stack and features is not None and features.classical:
            from ..features.volume import describe_spatial

            planes = ", " + describe_spatial(features, self.feature_config.spatial == "auto",
                                             "the layer's voxel size" if z_declared else "the stack")
        return f"{what}: {kind}, {n} trees, depth {depth if depth else 'unlimited'}{per_class}{refine}{planes}"

    def _default_cap(self) -> int | None:
        """The classifier's own ``max_samples_per_class`` (the training-set cap of the full model)."""
        from ..classifiers import make_classifier

        try:
            return make_classifier(self.classifier).get_params().get("max_samples_per_class")
        except Exception:  # noqa: BLE001 - a description only
            return None

    def _backbone(self, name: str):
        """A random-weights backbone (testing only), built once per name."""
        if name not in self._backbones:
            from ..backbones import create_backbone

            self._backbones[name] = create_backbone(name, pretrained=False, seed=0)
        return self._backbones[name]

    def featurizer(self, config: FeatureConfig | None = None):
        """The shared :class:`~napari_vitseg.features.stack.Featurizer` of ``config``.

        One featurizer per config is kept, so that a ViT is built once and a fitted ViT PCA
        basis stays the same for every model trained on the cached features.
        """
        from ..features.stack import Featurizer

        config = config or self.feature_config
        if self._featurizer is None or self._featurizer.config != config:
            backbone = None
            if config.backbone is not None:
                old = self._featurizer
                if self.random_weights:
                    backbone = self._backbone(config.backbone)
                elif old is not None and old.config.backbone == config.backbone and old.built_backbone is not None:
                    backbone = old.built_backbone  # reuse the ViT already built (never build it here)
            if config.backbone is not None and config.vit_pca:
                self.cache.clear()  # cached features depend on the PCA basis, which is refitted
            self._featurizer = Featurizer(config, backbone=backbone)
        return self._featurizer

    def new_segmenter(self, live: bool, inputs: JobInputs | None = None) -> Segmenter:
        """An unfitted :class:`Segmenter` that shares this controller's cache and featurizer
        (with the feature config :meth:`training_features` gives for ``inputs``)."""
        params = self.live_params() if live else dict(self.classifier_params)
        config = self.training_features(inputs)
        return Segmenter(config, self.classifier, params, class_names=list(self.class_names),
                         class_colors=list(self.class_colors), boundary_refinement=self._boundary_rows(live),
                         featurizer=self.featurizer(config), cache=self.cache)

    def adopt(self, ready: ModelReady) -> None:
        """Make ``ready`` the current model (on the UI thread)."""
        self.model = ready
        seg = ready.segmenter
        if ready.loaded_from is not None:
            self.feature_config = seg.feature_config
            self.classifier = seg.classifier
            self.classifier_params = dict(seg.classifier_params)
            self.boundary_refinement = seg.boundary_refinement
            if seg.class_names:
                self.class_names = list(seg.class_names)
                self.class_colors = list(seg.class_colors or DEFAULT_COLORS[: len(seg.class_names)])

    # -- jobs -----------------------------------------------------------------------
    def iter_train(self, inputs: JobInputs, *, live: bool, predict: bool = True):
        """Train on the scribbles, then predict the current plane.

        Only the labelled pixels are used: ``inputs.scribbles`` is the index snapshot (or an
        array, indexed plane by plane), and only the image planes that hold scribbles are read.

        Yields
        ------
        Progress, Status, ModelReady, PlaneUpdate

        Returns
        -------
        ModelReady or None
            ``None`` when a live job found nothing to do (fewer than two classes painted).

        Raises
        ------
        VitsegError
            No scribbles of two classes (full training), or the library's input errors.
        """
        index = self._index_of(inputs)
        classes = index.classes()
        if len(classes) < 2:
            msg = (f"Paint scribbles of at least two classes to train (found {classes or 'none'}); "
                   "pick a class in the class list and paint on the image.")
            if live:
                yield Status("Live: " + msg)
                return None
            raise VitsegError(msg)
        digest = index.digest()
        cur = self.model
        if live and cur is not None and cur.digest == digest and cur.loaded_from is None:
            ready = cur  # nothing changed since the current model was trained (e.g. undo + redo)
        else:
            seg = self.new_segmenter(live, inputs)
            yield Progress(0, 1, "training")
            yield from seg.iter_fit(self._image(inputs), index, channel_axis=inputs.channel_axis)
            self.n_trainings += 1
            ready = ModelReady(seg, live, digest, self.describe(live, seg.feature_config, len(index.shape) == 3,
                                                                inputs.z_step is not None))
            yield ready
        if predict:
            yield from self.iter_predict_plane(ready.segmenter, inputs, coarse=live)
        return ready

    def iter_predict_plane(self, seg: Segmenter, inputs: JobInputs, *, coarse: bool = False):
        """Predict the current plane (``inputs.z``) and only that plane.

        Planes above :data:`TILE_PIXELS` are predicted in row bands, those overlapping
        ``inputs.view_rows`` first; planes above :data:`COARSE_PIXELS` show a stride-2
        preview first when ``coarse``.

        Yields
        ------
        Progress, PlaneUpdate
        """
        img, nsp, _ = as_channels_last(self._image(inputs), inputs.channel_axis)
        z = inputs.z if nsp == 3 else None
        if nsp == 3 and (z is None or not 0 <= z < img.shape[0]):
            raise VitsegError(f"Plane {z} is outside the stack of {img.shape[0]} planes.")
        plane = plane_of(img, nsp, z)
        ny, nx = plane.shape[:2]
        probs = inputs.probabilities
        if ny * nx > TILE_PIXELS:
            bands = row_bands(ny, nx, inputs.view_rows)
            digest = seg.featurizer.plane_digest(plane)
            for i, rows in enumerate(bands):
                yield Progress(i, len(bands), f"rows {rows[0]}-{rows[1]} of {ny}")
                p = seg.predict_rows(plane, rows, digest=digest)
                yield PlaneUpdate(z, seg.labels_from_proba(p), uncertainty_u8(p), p if probs else None,
                                  seg.classes_.copy(), rows=rows, partial=i < len(bands) - 1)
            yield Progress(len(bands), len(bands), "done")
            return
        yield Progress(0, 2, "features and prediction")
        if coarse and ny * nx > COARSE_PIXELS:
            p = seg.predict_plane(plane, stride=2)
            lab = seg.labels_from_proba(p).repeat(2, 0).repeat(2, 1)[:ny, :nx]
            unc = uncertainty_u8(p).repeat(2, 0).repeat(2, 1)[:ny, :nx]
            prob = p.repeat(2, 1).repeat(2, 2)[:, :ny, :nx] if probs else None
            yield PlaneUpdate(z, lab, unc, prob, seg.classes_.copy(), coarse=True)
        yield Progress(1, 2, "predicting")
        p = seg.predict_plane(plane, use_cache=True)
        yield PlaneUpdate(z, seg.labels_from_proba(p), uncertainty_u8(p), p if probs else None, seg.classes_.copy())
        yield Progress(2, 2, "done")

    def iter_full_model(self, inputs: JobInputs):
        """The full-quality model that Apply, Save and Save project use (a job generator).

        Returns (as the generator's value) the current model when it is full quality (trained
        with Train, or loaded); when it is a live preview, trains a full-quality one on the
        scribbles of ``inputs`` first (yielding its :class:`Status` and
        :class:`~napari_vitseg._progress.Progress`, not predicting) and returns that; a live
        preview is returned as it is when ``inputs`` has no scribbles of two classes.

        Parameters
        ----------
        inputs : JobInputs
            Captured on the UI thread (:meth:`InputSection.job_inputs`).

        Returns
        -------
        ModelReady

        Raises
        ------
        VitsegError
            There is no model and no scribbles of two or more classes to train one.
        """
        cur = self.model
        if cur is not None and not cur.live:
            return cur
        if inputs.scribbles is None or len(self._index_of(inputs).classes()) < 2:
            if cur is not None:
                return cur
            raise VitsegError("No classifier yet: paint scribbles of two or more classes and press Train, "
                              "or load a classifier file.")
        yield Status("training the full-quality model first")
        ready = yield from self.iter_train(inputs, live=False, predict=False)
        return ready

    def iter_apply_stack(self, inputs: JobInputs):
        """Segment every plane of the image (the current plane first).

        Yields
        ------
        Progress, Status, ModelReady, PlaneUpdate (one per plane)

        Returns
        -------
        int
            Planes segmented.
        """
        ready = yield from self.iter_full_model(inputs)
        seg = ready.segmenter
        img, nsp, _ = as_channels_last(inputs.image, inputs.channel_axis)
        if nsp == 2:
            yield from self.iter_predict_plane(seg, JobInputs(inputs.image, inputs.channel_axis,
                                                              probabilities=inputs.probabilities,
                                                              view_rows=inputs.view_rows))
            return 1
        nz = img.shape[0]
        zs = list(range(nz))
        if inputs.z is not None and 0 <= inputs.z < nz:
            zs.remove(inputs.z)
            zs.insert(0, inputs.z)
        for i, z in enumerate(zs):
            yield Progress(i, nz, f"plane {z} ({i + 1}/{nz})")  # numbered as napari's slider
            p = seg.predict_plane(plane_of(img, nsp, z), use_cache=False)
            yield PlaneUpdate(z, seg.labels_from_proba(p), uncertainty_u8(p),
                              p if inputs.probabilities else None, seg.classes_.copy())
        yield Progress(nz, nz, "done")
        return nz

    def iter_apply_files(self, inputs: JobInputs, paths: Sequence, output_dir, *, suffix: str = "_seg",
                         probabilities: bool = False, skip_existing: bool = True):
        """Segment TIFF files (or the TIFFs of folders) into ``output_dir``, plane by plane.

        :func:`napari_vitseg.pipeline.batch.iter_apply_files` (output names, resume, atomic
        writes) with the current full-quality model; a cancelled file leaves no output behind.

        Yields
        ------
        Progress
            Fraction of the whole run in 1/1000 units.

        Returns
        -------
        list of pathlib.Path
            The outputs, written now or already there (their inputs' names are then in
            :attr:`files_skipped`).
        """
        ready = yield from self.iter_full_model(inputs)
        self.files_skipped = []
        job = iter_apply_files(ready.segmenter, paths, output_dir, suffix=suffix, probabilities=probabilities,
                               skip_existing=skip_existing)
        while True:
            try:
                p = next(job)
            except StopIteration as stop:
                return stop.value
            if isinstance(p, Progress) and p.msg.endswith(": already done"):
                self.files_skipped.append(p.msg[: -len(": already done")])
            yield p

    def iter_save(self, inputs: JobInputs, path):
        """Save the current model (a full-quality one, trained first if it is a live preview).

        Returns
        -------
        pathlib.Path
        """
        ready = yield from self.iter_full_model(inputs)
        seg = ready.segmenter
        seg.set_classes(self.class_names, self.class_colors)
        yield Status(f"saving {Path(path).name}")
        # never write over a file a layer was opened from (the image, the scribbles)
        return seg.save(path, inputs=tuple(inputs.extra.get("source_paths", ())))

    def iter_load(self, inputs: JobInputs, path):
        """Load a classifier file and predict the current plane with it.

        Yields
        ------
        Progress, ModelReady, PlaneUpdate

        Returns
        -------
        ModelReady
        """
        yield Progress(0, 2, f"loading {Path(path).name}")
        from ..classifiers import read_metadata

        stored = read_metadata(Path(path)).get("backbone") or {}
        backbone = None
        random = bool(stored) and not stored.get("pretrained", True)
        if random:
            if not random_weights_allowed():
                raise VitsegError(
                    f"{str(path)!r} was trained on a backbone with random weights (testing only); set "
                    f"{RANDOM_WEIGHTS_ENV}=1 to load it, or retrain with pretrained weights."
                )
            backbone = self._backbone(stored["name"])
        seg = Segmenter.load(path, backbone=backbone, cache=self.cache)
        if seg.feature_config.backbone is not None and seg.feature_config.vit_pca:
            self.cache.clear()  # cached ViT features were reduced with another PCA basis
        self._featurizer = seg.featurizer
        self.random_weights = random
        ready = ModelReady(seg, False, None, f"loaded {Path(path).name} ({seg.classifier})", loaded_from=str(path))
        yield ready
        if inputs.image is not None:
            yield from self.iter_predict_plane(seg, inputs)
        return ready
