"""The blob-name encoding: rclone's azureblob default, reversible, identity on ordinary names.
(tests/test_interop.py checks it against rclone itself.)"""

import os
import random

import pytest

from site_backup.names import decode_path, decode_segment, encode_path, encode_segment

# Worked by hand from rclone's lib/encoder rules for Slash,BackSlash,Del,Ctl,RightPeriod,InvalidUtf8.
KNOWN = [
    ("back\\slash.txt", "back\uff3cslash.txt"),
    ("ctl\x01.txt", "ctl\u2401.txt"),
    ("tab\there", "tab\u2409here"),
    ("new\nline", "new\u240aline"),
    ("del\x7f", "del\u2421"),
    ("nul\x00", "nul\u2400"),
    ("dot-end.", "dot-end\uff0e"),
    ("two..", "two.\uff0e"),
    (".", "\uff0e"),
    ("mid.dle", "mid.dle"),
    ("fw-end\uff0e", "fw-end\u201b\uff0e"),
    # rclone 1.75 writes these names too, but reads the first back as "x\u201b\uff0e" (its
    # Decode takes the quote before the final U+FF0E as quoting it, although that quote is
    # itself quoted): `rclone check` then reports the file on both sides. We decode it right.
    ("x\u201b.", "x\u201b\u201b\uff0e"),
    ("y\u201b\uff0e", "y\u201b\u201b\u201b\uff0e"),
    ("fw\uff0emid", "fw\uff0emid"),
    ("fw\uff3cback", "fw\u201b\uff3cback"),
    ("fw\uff0fslash", "fw\u201b\uff0fslash"),
    ("pic\u2401", "pic\u201b\u2401"),
    ("pic\u2400", "pic\u201b\u2400"),
    ("pic\u2421", "pic\u201b\u2421"),
    ("quote\u201bx", "quote\u201b\u201bx"),
    ("quote\u201b41", "quote\u201b\u201b41"),
    (os.fsdecode(b"a\xbf\xfeb"), "a\u201bBF\u201bFEb"),
    (os.fsdecode(b"a\xbf\\\xfeb"), "a\u201bBF\uff3c\u201bFEb"),
    (os.fsdecode(b"caf\xe9."), "caf\u201bE9\uff0e"),
    ("ctl\x01.", "ctl\u2401\uff0e"),
    ("\ufffd-real-replacement-char", "\ufffd-real-replacement-char"),
]


@pytest.mark.parametrize("name, blob", KNOWN)
def test_known_names(name, blob):
    assert encode_segment(name) == blob
    assert decode_segment(blob) == name


ORDINARY = ["index.html", "a b c.txt", "über-ü.md", "日本語.log", ".hidden", "~tilde", "x" * 255,
            "100%#?&=+;,!'\"()[]{}<>|*:$`@^", "emoji-\U0001f600", ". leading", "a.b.c"]


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_keep_todays_blob_names(name):
    assert encode_segment(name) == name
    assert decode_segment(name) == name
    assert encode_path(f"dir/{name}/{name}") == f"dir/{name}/{name}"


HOSTILE = (["\\", "/", ".", "\x7f", "\x00", "\u201b", "\uff0e", "\uff0f", "\uff3c", "\u2400", "\u2421", "\ufffd",
            "A", "f", "0", "9", "a", "é", " "]
           + [chr(c) for c in range(1, 0x20)] + [chr(0x2400 + c) for c in range(1, 0x20)]
           + [chr(0xDC00 + b) for b in (0x80, 0xBF, 0xC3, 0xE2, 0xFF)])


def _random_name(rng: random.Random) -> str:
    raw = "".join(rng.choice(HOSTILE) for _ in range(rng.randint(1, 12)))
    return os.fsdecode(os.fsencode(raw))  # as os.scandir would give it: escapes only for invalid bytes


def test_generated_names_round_trip():
    rng = random.Random(12)
    for _ in range(20_000):
        segment = _random_name(rng).replace("/", "")
        if not segment:
            continue
        blob = encode_segment(segment)
        assert decode_segment(blob) == segment, (segment, blob)
        assert blob.encode("utf-8")  # always valid Unicode, so always a storable name
        assert not any(c < " " or c in "\\\x7f" for c in blob)
        assert not blob.endswith(".")


def test_generated_paths_round_trip():
    rng = random.Random(7)
    for _ in range(2_000):
        path = "/".join(_random_name(rng).replace("/", "") or "x" for _ in range(rng.randint(1, 5)))
        blob = encode_path(path)
        assert blob.count("/") == path.count("/")
        assert decode_path(blob) == path


def test_whole_path_shortcut_agrees_with_segment_by_segment():
    # encode_path skips the per-segment work when the path holds nothing to encode: it must
    # give exactly the segment-by-segment result, hostile and ordinary names mixed.
    rng = random.Random(3)
    pool = ORDINARY + ["a.", "b\uff0e", "c\\d", "e\u201bf"]
    for _ in range(5_000):
        segments = [rng.choice(pool) if rng.random() < 0.7 else (_random_name(rng).replace("/", "") or "x")
                    for _ in range(rng.randint(1, 4))]
        path = "/".join(segments)
        assert encode_path(path) == "/".join(encode_segment(s) for s in segments), path


def test_names_other_tools_wrote_decode_leniently():
    assert decode_segment("it\u201bs") == "it\u201bs"  # a quote before an ordinary character stays
    assert decode_segment("\u201b") == "\u201b"
    assert decode_segment("a\u201bB\u201bEg") == "a\u201bB\u201bEg"  # not two hex digits
    assert decode_segment("x\u201bc3\u201ba9") == "xé"  # quoted bytes that form UTF-8 join up
    # A bare full-width slash cannot become '/' inside a file name: it stays, as with rclone.
    assert decode_path("a\uff0fb/c") == "a\uff0fb/c"


def test_a_name_no_file_can_have_is_refused():
    with pytest.raises(ValueError):
        encode_segment("lone\ud800")


def test_a_prefix_folder_holds_its_own_blobs_and_never_a_sibling_prefixs():
    from site_backup.names import blob_folder, blob_name

    assert blob_folder("") == "" and blob_folder("sites/www") == "sites/www/"
    for path in ("index.html", "a/b.txt"):
        assert blob_name("site", path).startswith(blob_folder("site"))
        assert not blob_name("site2", path).startswith(blob_folder("site"))
        assert blob_name("site", path).startswith(blob_folder(""))
