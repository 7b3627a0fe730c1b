"""MD5 of file content, the checksum Azure keeps as a blob's Content-MD5: one loop for the
backup's checks, verify and restore."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from .units import MiB


def md5_and_size(f: BinaryIO) -> tuple[bytes, int]:
    """MD5 digest and length of what the open binary file `f` holds from its position on."""
    md5, size = hashlib.md5(), 0
    # One buffer filled again and again rather than a new megabyte object per chunk.
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    while count := f.readinto(buffer):
        md5.update(view[:count])
        size += count
    return md5.digest(), size


def file_md5(path: str) -> bytes:
    """MD5 digest of the file at `path`."""
    with open(path, "rb", buffering=0) as f:
        return md5_and_size(f)[0]
