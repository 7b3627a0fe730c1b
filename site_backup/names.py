"""Blob names for file paths, reversibly: rclone's default encoding for Azure Blob.

Azure cannot store some names faithfully (Azurite turns `\\` into `/`, a control character
makes a container unlistable, Azure's rules forbid a segment ending in `.`, and a blob name
must be valid Unicode). rclone's answer, and so ours, is its azureblob default encoding
`Slash,BackSlash,Del,Ctl,RightPeriod,InvalidUtf8`, applied to each path segment:

- NUL, control characters U+0001-U+001F and DEL become their control pictures
  (U+2400-U+241F, U+2421); `/` and `\\` their full-width forms (U+FF0F, U+FF3C);
- a `.` ending a segment becomes U+FF0E;
- a byte that is not valid UTF-8 (a lone surrogate U+DC80-U+DCFF in a name from
  `os.scandir`) becomes U+201B followed by its two upper-case hex digits;
- a look-alike already in a name (and U+201B itself) is quoted with U+201B.

A segment that holds none of these is its own blob name, so ordinary names are unchanged.
"""

from __future__ import annotations

import re
from urllib.parse import quote

QUOTE = "\u201b"  # SINGLE HIGH-REVERSED-9 QUOTATION MARK
_PICTURES = 0x2400  # SYMBOL FOR NULL; U+2401-U+241F picture U+0001-U+001F
_DEL_PICTURE = "\u2421"
_FULL_STOP = "\uff0e"

_ENCODED = {chr(c): chr(_PICTURES + c) for c in range(0x20)}
_ENCODED.update({"\x7f": _DEL_PICTURE, "/": "\uff0f", "\\": "\uff3c"})
_DECODED = {v: k for k, v in _ENCODED.items()}
# Characters that stand for something else in a blob name, so a name holding one
# literally must quote it.
_QUOTED = set(_DECODED) | {QUOTE}

_NEEDS_ENCODING = re.compile("[\x00-\x1f\x7f/\\\\\u2400-\u241f\u2421\u201b\uff0f\uff3c\ud800-\udfff]|[.\uff0e]\\Z")
# The same over a whole path: a `.` ends a segment before a `/` too.
_PATH_NEEDS_ENCODING = re.compile("[\x00-\x1f\x7f\\\\\u2400-\u241f\u2421\u201b\uff0f\uff3c\ud800-\udfff]|[.\uff0e](?:/|\\Z)")
_NEEDS_DECODING = re.compile("[\u2400-\u241f\u2421\u201b\uff0f\uff3c]|\uff0e\\Z")
_HEX = set("0123456789ABCDEFabcdef")


def encode_segment(segment: str) -> str:
    """The blob-name form of one file or folder name (a str from os.scandir, so bytes that
    are not UTF-8 are surrogate escapes)."""
    if not _NEEDS_ENCODING.search(segment):
        return segment
    suffix = ""
    if segment.endswith("."):
        segment, suffix = segment[:-1], _FULL_STOP
    elif segment.endswith(_FULL_STOP):
        segment, suffix = segment[:-1], QUOTE + _FULL_STOP
    out = []
    for ch in segment:
        if ch in _ENCODED:
            out.append(_ENCODED[ch])
        elif ch in _QUOTED:
            out.append(QUOTE + ch)
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"{QUOTE}{ord(ch) - 0xDC00:02X}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError(f"{segment!r} holds a lone surrogate that no file name decodes to")
        else:
            out.append(ch)
    return "".join(out) + suffix


def decode_segment(segment: str) -> str:
    """The file name a blob-name segment stands for: the inverse of encode_segment, and
    lenient with names other tools wrote (a quote before an ordinary character is kept).
    Bytes that are not UTF-8 come back as surrogate escapes (os.fsencode gives the bytes)."""
    if not _NEEDS_DECODING.search(segment):
        return segment
    out = bytearray()
    i, n = 0, len(segment)
    while i < n:
        ch = segment[i]
        nxt = segment[i + 1] if i + 1 < n else ""
        if ch == QUOTE and (nxt in _QUOTED or (nxt == _FULL_STOP and i + 2 == n)):
            out += nxt.encode()
            i += 2
        elif ch == QUOTE and nxt in _HEX and i + 2 < n and segment[i + 2] in _HEX:
            out.append(int(segment[i + 1 : i + 3], 16))
            i += 3
        elif ch == _FULL_STOP and i + 1 == n:
            out += b"."
            i += 1
        else:
            out += _DECODED.get(ch, ch).encode()
            i += 1
    return out.decode("utf-8", "surrogateescape")


def encode_path(path: str) -> str:
    """The blob name (without prefix) for a '/'-separated path relative to the root."""
    if not _PATH_NEEDS_ENCODING.search(path):
        return path
    return "/".join(encode_segment(s) for s in path.split("/"))


def decode_path(name: str) -> str:
    """The '/'-separated path a blob name (without prefix) stands for. A `/` inside one
    segment (a bare U+FF0F that another tool wrote) cannot be in a file name: it stays
    U+FF0F, the name rclone's local backend gives such a file too."""
    return "/".join(decode_segment(s).replace("/", "\uff0f") for s in name.split("/"))


def blob_name(prefix: str, path: str) -> str:
    """The blob for a file: the prefix, then the path relative to the root with each name
    encoded as rclone does for Azure Blob (ordinary names stay as they are)."""
    name = encode_path(path)
    return f"{prefix}/{name}" if prefix else name


def blob_folder(prefix: str) -> str:
    """Where the blobs of `prefix` start ("site/" for site; "" for the whole container), so
    that a listing of site never reaches site2."""
    return f"{prefix}/" if prefix else ""


def attic_folder(prefix: str) -> str:
    """Where the content of deleted files goes in the history container, per destination."""
    return f"attic/{quote('/' + prefix, safe='')}/"
