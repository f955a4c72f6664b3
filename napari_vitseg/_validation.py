"""Small shared validators whose errors name the argument and say how to fix it.

Every public entry point of the library validates its inputs with these helpers, so
that the CLI, the Python API and the napari widget give the same messages
(modelled on scikit-image's ``check_nD`` and scikit-learn's parameter validation).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "VitsegError",
    "VitsegWarning",
    "check_ndim",
    "check_channel_axis",
    "as_float32",
    "check_finite",
    "check_option",
]


class VitsegError(ValueError):
    """A user-facing input error: the message names the input and what to do."""


class VitsegWarning(UserWarning):
    """Warnings raised by napari-vitseg (turned into errors in the test-suite)."""


_SUPPORTED_KINDS = "biuf"  # bool, signed/unsigned int, float


def check_option(value, options, name: str):
    """Check that ``value`` is one of ``options``.

    Raises
    ------
    VitsegError
        "The 'name' parameter must be one of [...]; got ... instead."
    """
    if value not in options:
        raise VitsegError(
            f"The {name!r} parameter must be one of {sorted(map(str, options))}; got {value!r} instead."
        )
    return value


def check_channel_axis(ndim: int, channel_axis: int | None, name: str = "image") -> int | None:
    """Normalise ``channel_axis`` to a non-negative index (or ``None``).

    Parameters
    ----------
    ndim : int
        Number of dimensions of the array, channel axis included.
    channel_axis : int or None
        The axis holding channels; negative values count from the end.

    Returns
    -------
    int or None

    Raises
    ------
    VitsegError
        If the axis is out of range.
    """
    if channel_axis is None:
        return None
    if not isinstance(channel_axis, (int, np.integer)):
        raise VitsegError(f"channel_axis must be an int or None; got {channel_axis!r} instead.")
    if not -ndim <= channel_axis < ndim:
        raise VitsegError(
            f"channel_axis={channel_axis} is out of range for {name} with {ndim} dimensions; "
            f"pass an axis between {-ndim} and {ndim - 1}, or None for a single-channel image."
        )
    return int(channel_axis) % ndim


def check_ndim(array, spatial_ndims=(2, 3), channel_axis: int | None = None, name: str = "image") -> int:
    """Check the number of spatial dimensions of ``array``.

    Parameters
    ----------
    array : array-like
        Image of shape (Y, X) or (Z, Y, X), with an optional channel axis.
    spatial_ndims : tuple of int
        Allowed numbers of spatial dimensions.
    channel_axis : int or None
        Channel axis, already normalised.

    Returns
    -------
    int
        The number of spatial dimensions.

    Raises
    ------
    VitsegError
        If the dimensionality is not supported.
    """
    nd = array.ndim - (channel_axis is not None)
    if nd not in spatial_ndims:
        hint = ""
        if array.ndim >= 3 and channel_axis is None and array.shape[-1] in (3, 4):
            hint = " It looks like an RGB image: pass channel_axis=-1 (CLI: --channel-axis -1)."
        raise VitsegError(
            f"{name} has shape {tuple(array.shape)} ({nd} spatial dimensions); supported are "
            f"{' or '.join(map(str, spatial_ndims))} spatial dimensions (Y, X) or (Z, Y, X)"
            f"{' plus one channel axis' if channel_axis is None else ''}.{hint}"
        )
    return nd


def check_dtype(array, name: str = "image") -> None:
    """Refuse dtypes that are not bool, integer or real floating point.

    Raises
    ------
    VitsegError
        For complex, object, string or structured arrays.
    """
    if np.dtype(array.dtype).kind not in _SUPPORTED_KINDS:
        raise VitsegError(
            f"{name} has dtype {array.dtype}, which is not supported; convert it to an integer or "
            "floating-point type (for example with numpy's .astype(np.float32))."
        )


def check_finite(array: np.ndarray, name: str = "image") -> None:
    """Refuse arrays with NaN or infinite values.

    Raises
    ------
    VitsegError
        Names the count of bad values and suggests ``np.nan_to_num``.
    """
    if np.dtype(array.dtype).kind == "f":
        bad = ~np.isfinite(array)
        n = int(np.count_nonzero(bad))
        if n:
            raise VitsegError(
                f"{name} contains {n} NaN or infinite value(s); replace them first "
                "(for example with numpy.nan_to_num) or crop them out."
            )


def as_float32(array, name: str = "image") -> np.ndarray:
    """Return ``array`` as a finite float32 numpy array (float32 input is not copied).

    Raises
    ------
    VitsegError
        For unsupported dtypes or non-finite values.
    """
    array = np.asarray(array)
    check_dtype(array, name)
    check_finite(array, name)
    return array.astype(np.float32, copy=False)
