"""Fixtures of the io tests: count the chunks a store is asked for."""

from __future__ import annotations

import pytest

#: Keys of zarr metadata (never pixel data).
METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


@pytest.fixture
def chunk_reads(monkeypatch):
    """``count(store_class) -> list``: the list fills with every chunk key (not metadata) read
    through stores of that class (zarr's ``LocalStore``, tifffile's ``ZarrTiffStore``, ...)."""

    def count(cls) -> list[str]:
        keys: list[str] = []
        orig = cls.get

        async def get(self, key, *args, **kwargs):
            if key.rsplit("/", 1)[-1] not in METADATA:
                keys.append(key)
            return await orig(self, key, *args, **kwargs)

        monkeypatch.setattr(cls, "get", get)
        return keys

    return count
