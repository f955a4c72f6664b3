"""Small shared validators whose errors name the argument and say how to fix it.

Every public entry point of the library validates its inputs with these helpers, so
that the CLI, the Python API and the napari widget give the same messages
(modelled on scikit-image's ``check_nD`` and scikit-learn's parameter validation).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "VitsegError",
    "UnreadableInputError",
    "unreadable",
    "VitsegWarning",
    "check_ndim",
    "check_channel_axis",
    "as_float32",
    "check_finite",
    "check_option",
    "check_number",
]


class VitsegError(ValueError):
    """A user-facing input error: the message names the input and what to do."""


class UnreadableInputError(VitsegError):
    """Pixels of an input file could not be read (a truncated or damaged file); the message
    names the file and the plane, so callers pass it on without adding their own prefix."""


def unreadable(path, error: BaseException, plane: int | None = None) -> UnreadableInputError:
    """The project's error for a failed read of ``path`` (plane ``plane`` when known).

    Parameters
    ----------
    path : str or pathlib.Path
    error : BaseException
        What the reader raised (tifffile, zarr, codecs, OS errors).
    plane : int, optional
    """
    where = f"plane {plane} of " if plane is not None else ""
    return UnreadableInputError(f"Cannot read {where}{str(path)!r} ({type(error).__name__}: {str(error)[:120]}); the "
                                "file may be truncated or damaged.")


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
    try:
        ok = value in options
    except (TypeError, ValueError):  # unhashable (a list) in a dict of options; an array compared elementwise
        ok = False
    if not ok:
        raise VitsegError(
            f"The {name!r} parameter must be one of {sorted(map(str, options))}; got {value!r} instead."
        )
    return value


def as_array(value, name: str = "image"):
    """``value`` itself when it is already an array (numpy, dask, zarr: anything with ``ndim``
    and ``dtype``), else ``np.asarray(value)``.

    Raises
    ------
    VitsegError
        A ragged nested list (rows of different lengths) or anything numpy cannot make an
        array of: "The image is not an array of numbers ...".
    """
    if hasattr(value, "ndim") and hasattr(value, "dtype"):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise VitsegError(f"The {name} is not an array of numbers (a ragged list, rows of different lengths?): "
                          f"{str(e).splitlines()[0][:100]}; give a numpy array.") from None


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
    if not isinstance(channel_axis, (int, np.integer)) or isinstance(channel_axis, (bool, np.bool_)):
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
    if array.dtype == np.float32:
        return array
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(np.float32)
    if out.dtype.kind == "f" and not np.all(np.isfinite(out)):  # float64 beyond float32's range
        raise VitsegError(f"{name} holds values beyond float32's range (about ±3.4e38); rescale it first.")
    return out


def check_number(value, name: str, *, kind: str = "int", low=None, high=None, allow_none: bool = False,
                 owner: str | None = None):
    """Check a numeric parameter against a closed range (scikit-learn's message style).

    Parameters
    ----------
    value : object
    name : str
        Parameter name, for the message.
    kind : {'int', 'float'}
        ``'int'`` accepts Python / numpy integers (not bool); ``'float'`` any finite real number.
    low, high : number, optional
        Inclusive bounds.
    allow_none : bool
        Whether ``None`` is allowed.
    owner : str, optional
        Class or function the parameter belongs to, for the message.

    Returns
    -------
    int, float or None
        The value as a Python number.

    Raises
    ------
    VitsegError
        "The 'name' parameter of Owner must be an int in the range [low, high]; got ... instead."

    Examples
    --------
    >>> check_number(5, "n_estimators", low=1)
    5
    >>> check_number(0, "n_estimators", low=1, owner="RandomForest")
    Traceback (most recent call last):
    ...
    napari_vitseg._validation.VitsegError: The 'n_estimators' parameter of RandomForest must be an int in the range [1, inf]; got 0 instead.
    """
    if value is None and allow_none:
        return None
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    is_real = is_int or (isinstance(value, (float, np.floating)) and np.isfinite(value))
    ok = is_int if kind == "int" else is_real
    if ok:
        v = int(value) if kind == "int" else float(value)
        ok = (low is None or v >= low) and (high is None or v <= high)
        if ok:
            return v
    rng = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
    what = f"{'an int' if kind == 'int' else 'a number'} in the range {rng}" + (" or None" if allow_none else "")
    of = f" of {owner}" if owner else ""
    raise VitsegError(f"The {name!r} parameter{of} must be {what}; got {value!r} instead.")

