"""Verify's comparison of files with blobs, without Prefect (the flow is in test_backup_flow)."""

import hashlib
import os

from site_backup.files import FileEntry
from site_backup.storage import RemoteBlob
from site_backup.verify import extra_blobs, verify_batch


def test_files_are_found_under_their_encoded_blob_names(tmp_path):
    (tmp_path / "back\\slash.").write_bytes(b"x")
    remote = {"p/back\uff3cslash\uff0e": RemoteBlob(1, hashlib.md5(b"x").digest(), None)}
    result = verify_batch(str(tmp_path), [FileEntry("back\\slash.", 1, 0)], remote, "p")
    assert (result.matching, result.missing) == (1, [])


def test_extra_blobs_are_reported_like_missing_files_relative_to_the_prefix_and_decoded():
    files = [[FileEntry("kept.txt", 1, 0)]]
    remote = ["site/kept.txt", "site/old/removed.html", "site/gone\uff3cback\uff0e", "site/caf\u201bE9"]
    assert extra_blobs(remote, files, "site") == ["caf\\xe9", "gone\\back.", "old/removed.html"]
    assert extra_blobs(["kept.txt", "x/y"], files, "") == ["x/y"]
