"""Reading and writing images: lazy TIFF reading, atomic plane-by-plane TIFF writing, and the
rules for file names and inputs (suffixes, stems, folder expansion)."""

from ._paths import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    expand_inputs,
    image_stem,
    is_tiff,
    sample_data_dir,
)
from ._tiff import (
    LazyImage,
    TiffPlaneWriter,
    TiffSeries,
    open_image,
    read_image,
    tiff_series,
    write_tiff,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "LazyImage",
    "TiffPlaneWriter",
    "TiffSeries",
    "expand_inputs",
    "image_stem",
    "is_tiff",
    "open_image",
    "read_image",
    "sample_data_dir",
    "tiff_series",
    "write_tiff",
]
