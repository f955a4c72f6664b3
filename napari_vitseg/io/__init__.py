"""Reading and writing images: lazy reading of TIFF / OME-TIFF files, stacks of TIFF slices and
zarr / OME-Zarr images (pyramids with all their levels), atomic plane-by-plane TIFF writing,
and the rules for names and inputs (suffixes, stems, folder and pattern expansion)."""

from ._paths import (
    IMAGE_SUFFIXES,
    STACK_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    expand_inputs,
    image_stem,
    is_pattern,
    is_tiff,
    is_zarr,
    pattern_files,
    sample_data_dir,
)
from ._tiff import (
    LazyImage,
    TiffPlaneWriter,
    TiffSeries,
    layer_scale,
    open_image,
    plane_chunks,
    read_image,
    tiff_series,
    write_tiff,
)
from ._zarr import open_zarr, zarr_axes

__all__ = [
    "IMAGE_SUFFIXES",
    "STACK_SUFFIXES",
    "TIFF_SUFFIXES",
    "ZARR_SUFFIXES",
    "LazyImage",
    "TiffPlaneWriter",
    "TiffSeries",
    "expand_inputs",
    "image_stem",
    "layer_scale",
    "is_pattern",
    "is_tiff",
    "is_zarr",
    "open_image",
    "open_zarr",
    "pattern_files",
    "plane_chunks",
    "read_image",
    "sample_data_dir",
    "tiff_series",
    "write_tiff",
    "zarr_axes",
]
