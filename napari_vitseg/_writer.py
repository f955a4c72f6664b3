"""npe2 writer: a Labels layer (segmentation or scribbles) to a TIFF, atomically.

No Qt is imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_labels"]


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write label data as an uint8 / uint16 / uint32 TIFF (the smallest that fits).

    The file is written under a temporary name and renamed when complete
    (:func:`napari_vitseg.io.write_tiff`).

    Parameters
    ----------
    path : str
        Destination; ``.tif`` is appended when the name has no TIFF suffix.
    data : array-like of int
        Labels, (Y, X) or (Z, Y, X); dask arrays are computed.
    meta : dict
        Layer attributes (unused apart from the name).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    VitsegError
        Negative, non-integer or too-large label values.
    """
    from ._validation import VitsegError
    from .io import is_tiff, write_tiff

    arr = np.asarray(data)
    if arr.dtype.kind not in "biu":
        raise VitsegError(f"Labels must be integers to be written as TIFF; got dtype {arr.dtype}.")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if lo < 0:
        raise VitsegError(f"Labels must be >= 0 to be written as TIFF; the layer has value {lo}.")
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            break
    else:
        raise VitsegError(f"Label value {hi} does not fit in uint32.")
    p = Path(path)
    if not is_tiff(p):
        p = p.with_name(p.name + ".tif")
    axes = {2: "YX", 3: "ZYX"}.get(arr.ndim)
    write_tiff(p, arr.astype(dt, copy=False), metadata={"axes": axes} if axes else None, rgb=False)
    return [str(p)]
