"""Content types as rclone stores them (test_interop.py compares with rclone itself)."""

import pytest

from site_backup.content_types import content_type


@pytest.mark.parametrize("path, expected", [
    ("logs/app.log", "text/x-log; charset=utf-8"),
    ("README.md", "text/markdown; charset=utf-8"),
    ("index.html", "text/html; charset=utf-8"),
    ("site.css", "text/css; charset=utf-8"),
    ("app.mjs", "text/javascript; charset=utf-8"),
    ("app.js.map", "application/json"),
    ("events.jsonl", "application/jsonl"),
    ("data.json", "application/json"),
    ("img/photo.webp", "image/webp"),
    ("img/photo.avif", "image/avif"),
    ("fonts/f.woff2", "font/woff2"),
    ("app.wasm", "application/wasm"),
    ("notes.TXT", "text/plain; charset=utf-8"),
    ("archive.tar.gz", "application/gzip"),  # Python's mimetypes: application/x-tar
    ("rotated.log.1", "application/octet-stream"),
    ("Makefile", "application/octet-stream"),
    ("dir.d/no-extension", "application/octet-stream"),
])
def test_content_types(path, expected):
    assert content_type(path) == expected
