"""A strict, bounded decoder of the UBJSON that XGBoost writes (``Booster.save_raw("ubj")``).

XGBoost's own UBJSON reader trusts the bytes: an empty buffer aborts the process and a declared
length allocates that many bytes before it is checked (a 10-byte header can segfault it). A
classifier file's ``model.ubj`` is therefore decoded here first, in Python, and only a document
that decodes completely is handed to XGBoost (then its trees are checked, see
``_file._check_xgboost_model``).

Format: Universal Binary JSON, draft 12 (https://ubjson.org), big-endian. Supported: ``Z T F``
(null, true, false), ``i U I l L`` (int8, uint8, int16, int32, int64), ``d D`` (float32,
float64), ``S`` (string), ``[`` and ``{`` with the optional ``$`` type / ``#`` count markers
(typed numeric arrays become read-only numpy arrays). Refused: the no-op ``N``, high-precision
``H`` and char ``C`` (XGBoost never writes them), any declared length or count larger than the
bytes that remain, nesting deeper than :data:`MAX_DEPTH`, duplicate object keys and trailing
bytes. There is no well-kept PyPI decoder with these bounds (``py-ubjson``, last released in
2020, decodes typed arrays element by element).
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["UBJSONError", "decode", "MAX_DEPTH"]

#: Deepest nesting accepted (an XGBoost model is about 8 levels deep).
MAX_DEPTH = 32

_INTS = {b"i": ">i1", b"U": ">u1", b"I": ">i2", b"l": ">i4", b"L": ">i8"}
_FLOATS = {b"d": ">f4", b"D": ">f8"}
_NUMERIC = {**_INTS, **_FLOATS}
_STRUCT = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q", b"d": ">f", b"D": ">d"}


class UBJSONError(ValueError):
    """Malformed or over-declared UBJSON (the message says what and at which byte)."""


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def fail(self, what: str):
        raise UBJSONError(f"{what} at byte {self.pos}")

    def take(self, n: int) -> memoryview:
        if n < 0 or n > len(self.data) - self.pos:
            self.fail(f"a length of {n} bytes runs past the end ({len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def marker(self) -> bytes:
        return bytes(self.take(1))

    def number(self, m: bytes):
        fmt = _STRUCT[m]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def length(self) -> int:
        m = self.marker()
        if m not in _INTS:
            self.fail(f"a length of type {m!r}, not an integer")
        n = int(self.number(m))
        if n < 0 or n > len(self.data) - self.pos:  # every element or byte takes at least one byte
            self.fail(f"a declared length or count of {n} larger than the {len(self.data) - self.pos} bytes left")
        return n

    def string(self) -> str:
        raw = bytes(self.take(self.length()))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("a string that is not UTF-8")

    def value(self, m: bytes, depth: int):
        if m in _STRUCT:
            v = self.number(m)
            if m in _FLOATS:
                return float(v)
            return int(v)
        if m == b"S":
            return self.string()
        if m == b"Z":
            return None
        if m == b"T":
            return True
        if m == b"F":
            return False
        if m in (b"[", b"{"):
            if depth >= MAX_DEPTH:
                self.fail(f"nesting deeper than {MAX_DEPTH}")
            return self.container(m == b"{", depth + 1)
        self.fail(f"an unexpected marker {m!r}")

    def container(self, is_object: bool, depth: int):
        typ = count = None
        m = self.marker()
        if m == b"$":
            typ = self.marker()
            if typ not in _NUMERIC:  # XGBoost types only numeric arrays; zero-byte types allow count bombs
                self.fail(f"a container of type {typ!r}")
            m = self.marker()
            if m != b"#":
                self.fail("a typed container without a count")
        if m == b"#":
            count = self.length()
            m = None
        if is_object:
            return self._object(typ, count, m, depth)
        if typ is not None:
            dt = np.dtype(_NUMERIC[typ])
            raw = self.take(count * dt.itemsize)
            arr = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
            arr.flags.writeable = False
            return arr
        out = []
        while True:
            if count is not None and len(out) == count:
                return out
            m = m or self.marker()
            if count is None and m == b"]":
                return out
            out.append(self.value(m, depth))
            m = None

    def _object(self, typ, count, m, depth):
        out = {}
        while True:
            if count is not None and len(out) == count:
                return out
            if count is None:
                m = m or self.marker()
                if m == b"}":
                    return out
                self.pos -= 1  # the marker was the key's length type
            key = self.string()
            if key in out:
                self.fail(f"a duplicate key {key[:40]!r}")
            out[key] = self.value(typ, depth) if typ is not None else self.value(self.marker(), depth)
            m = None


def decode(data: bytes):
    """Decode one UBJSON document that fills ``data`` exactly.

    Parameters
    ----------
    data : bytes
        The whole document.

    Returns
    -------
    object
        ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` or ``None``; typed numeric
        arrays as read-only native-endian numpy arrays.

    Raises
    ------
    UBJSONError
        Empty or truncated data, a declared length or count larger than the bytes left, an
        unknown marker, nesting deeper than :data:`MAX_DEPTH`, duplicate keys, trailing bytes.
    """
    r = _Reader(bytes(data))
    if not len(r.data):
        raise UBJSONError("no data")
    out = r.value(r.marker(), 0)
    if r.pos != len(r.data):
        r.fail(f"{len(r.data) - r.pos} trailing bytes")
    return out
