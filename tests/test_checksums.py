"""The one MD5 loop (site_backup/checksums.py) that the backup's checks, verify and restore share."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from site_backup.checksums import file_md5, md5_and_size
from site_backup.units import MiB


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 5])
def test_md5_and_size_of_a_file_match_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    with open(path, "rb", buffering=0) as f:
        assert md5_and_size(f) == (hashlib.md5(data).digest(), size)
    assert file_md5(str(path)) == hashlib.md5(data).digest()


def test_md5_and_size_start_at_the_file_position():
    # The copy re-reads a file after seek(0); a caller that has read part of it gets the rest.
    data = os.urandom(MiB + 10)
    f = io.BytesIO(data)
    f.seek(100)
    assert md5_and_size(f) == (hashlib.md5(data[100:]).digest(), len(data) - 100)
    assert md5_and_size(f) == (hashlib.md5(b"").digest(), 0)
