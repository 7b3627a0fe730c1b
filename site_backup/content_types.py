"""The Content-Type a file's blob gets, as rclone and AzCopy set it.

Both peers are Go programs and take types from the system's shared-mime-info and
mime.types, so what they store varies by machine; Python's `mimetypes` knows fewer types
(no `.log`, `.jsonl`, `.map`, `.yaml`) and calls `.tar.gz` `application/x-tar`. A fixed
table for the files web sites and log folders hold keeps every machine's backups alike;
other extensions fall back to `mimetypes`. Text types carry `; charset=utf-8`, as rclone
stores them (AzCopy stores the bare type).
"""

from __future__ import annotations

import mimetypes
import posixpath

# Where rclone 1.75 and AzCopy 10.32 agree, their type; otherwise the one a web server
# would send (noted).
_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css",
    ".js": "text/javascript", ".mjs": "text/javascript",  # AzCopy: application/javascript
    ".json": "application/json",
    ".map": "application/json",  # source maps are JSON; both peers: none
    ".jsonl": "application/jsonl",  # both peers: none
    ".xml": "text/xml", ".svg": "image/svg+xml", ".rss": "application/rss+xml", ".atom": "application/atom+xml",
    ".txt": "text/plain", ".log": "text/x-log", ".md": "text/markdown", ".markdown": "text/markdown",
    ".csv": "text/csv", ".yaml": "application/x-yaml", ".yml": "application/x-yaml", ".toml": "application/toml",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".avif": "image/avif", ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf",
    ".otf": "font/otf",  # both peers: an OpenDocument formula template
    ".wasm": "application/wasm", ".pdf": "application/pdf",
    ".zip": "application/zip", ".gz": "application/gzip", ".tar": "application/x-tar",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
}


def content_type(path: str) -> str:
    """The Content-Type for the file at `path`, decided by its last extension."""
    ext = posixpath.splitext(path)[1].lower()
    kind = _TYPES.get(ext) or (mimetypes.guess_type("f" + ext, strict=False)[0] if ext else None)
    if not kind:
        return "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind.startswith("text/") else kind
