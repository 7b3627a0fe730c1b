"""Checkpoint keys: what identifies a piece of finished work in Prefect's result store."""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

from site_backup import CHECKPOINT_VERSION


def checkpoint_key(kind: str, identity: list, items: Iterable[str]) -> str:
    """A checkpoint key: a hash of what the work is (its identity, then one line per
    file or blob), never of which run or which code did it."""
    h = hashlib.sha256(json.dumps([CHECKPOINT_VERSION, *identity]).encode())
    for item in items:
        h.update(f"\0{item}".encode("utf-8", "surrogatepass"))
    return f"site-backup-{kind}-{h.hexdigest()}"
