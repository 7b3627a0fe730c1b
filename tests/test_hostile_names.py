"""Names the service cannot store as they are: backup, verify and restore round-trip them
(the encoding itself is in test_names.py, the other tools' view in test_interop.py)."""

from __future__ import annotations

import hashlib
import os

from flows.backup_site_content import backup_site_content
from flows.restore_site_content import restore_site_content
from site_backup.files import Problem
from site_backup.restore import RestoreBatchResult, plan_restore
from site_backup.storage import RemoteBlob
from site_backup.run_summaries import summarize_restore
from tests.conftest import read_tree


# Every class of name the service cannot store as it is (see site_backup/names.py).
HOSTILE_NAMES = {
    "back\\slash.txt": b"backslash",
    "ctl\x01.txt": b"control character",
    "all-controls-" + "".join(chr(c) for c in range(1, 0x20)) + ".txt": b"U+0001-U+001F",
    "del\x7f.txt": b"DEL",
    "tab\tand\nnewline": b"tab and newline",
    "dot-end.": b"trailing dot",
    "dotdir./f.txt": b"in a folder ending with a dot",
    "two dots..": b"two trailing dots",
    os.fsdecode(b"latin1-caf\xe9.txt"): b"not UTF-8",
    os.fsdecode(b"bad\xff\xfe/inner\x80.log"): b"not UTF-8, folder too",
    "look-alikes \uff3c \u2401 \u2421 \u201b \uff0e": b"look-alikes already in the name, one at the end",
    "quoted-look \u201bBF.txt": b"looks like a quoted byte",
    "x" * 252 + "\\\x01.": b"255 bytes with a backslash, a control and a trailing dot",
    "/".join(["deep."] * 40) + "/leaf\\.txt": b"deep folders",
}


def test_every_name_round_trips_through_backup_verify_and_restore(storage, checkpoints, container_name, make_tree,
                                                                  tmp_path):
    from flows.verify_backup import verify_backup
    from site_backup.names import encode_path

    source = make_tree(HOSTILE_NAMES)
    for i, rel in enumerate(HOSTILE_NAMES):
        os.utime(source / rel, ns=(1_600_000_000_000_000_007 + i, 1_600_000_000_000_000_007 + i))
    backup = backup_site_content(str(source), container=container_name, prefix="site")
    assert (backup.files_uploaded, backup.files_failed) == (len(HOSTILE_NAMES), 0), backup.failed
    # The container still lists (a raw control character made Azurite answer 500), and
    # every blob has the encoded name: no backslash, control character or trailing dot left.
    names = {b.name for b in storage.container(container_name).list_blobs()}
    assert names == {f"site/{encode_path(rel)}" for rel in HOSTILE_NAMES}
    assert not any(c < " " or c in "\\\x7f" for name in names for c in name)
    assert not any(seg.endswith(".") for name in names for seg in name.split("/"))
    verified = verify_backup(str(source), container=container_name, prefix="site")
    assert (verified.outcome, verified.files_matching, verified.extra) == ("verified", len(HOSTILE_NAMES), [])
    target = tmp_path / "restored"
    restored = restore_site_content(container_name, str(target), prefix="site")
    assert (restored.outcome, restored.files_restored) == ("completed", len(HOSTILE_NAMES)), restored
    assert read_tree(target) == HOSTILE_NAMES
    for rel in HOSTILE_NAMES:
        assert os.stat(target / rel).st_mtime_ns == os.stat(source / rel).st_mtime_ns, rel
    assert verify_backup(str(target), container=container_name, prefix="site").outcome == "verified"
    again = backup_site_content(str(source), container=container_name, prefix="site", refresh=True)
    assert (again.files_uploaded, again.files_unchanged) == (0, len(HOSTILE_NAMES))


def test_plan_decodes_blob_names_into_file_names():
    plan = plan_restore([("p/back\uff3cslash", blob(b"1")), ("p/dotdir\uff0e/f\u2401", blob(b"2")),
                         ("p/caf\u201bE9", blob(b"3")), ("p/nul\u2400", blob(b"4"))], "p", 10, 10**6)
    assert [e.path for b in plan.batches for e in b] == ["back\\slash", "dotdir./f\x01", os.fsdecode(b"caf\xe9")]
    assert [e.name for b in plan.batches for e in b] == ["p/back\uff3cslash", "p/dotdir\uff0e/f\u2401", "p/caf\u201bE9"]
    [refused] = plan.refused
    assert refused.path == "nul\x00" and "NUL" in refused.reason


def blob(data: bytes) -> RemoteBlob:
    return RemoteBlob(len(data), hashlib.md5(data).digest(), None)


def test_restore_summary_prints_names_that_are_not_utf8():
    name = os.fsdecode(b"caf\xe9.txt")
    result = RestoreBatchResult(unverified=[name], failed=[Problem(name, "damaged blob")])
    summary = summarize_restore([Problem(name, "refused")], [(result, False)], source="s", target="t",
                                duration_seconds=1)
    assert summary.unverified == ["caf\\xe9.txt"] and summary.failed[0].path == "caf\\xe9.txt"
    summary.to_text().encode("utf-8")
    summary.model_dump_json().encode("utf-8")


def test_limits_apply_to_the_encoded_name_and_are_reported_not_truncated(tmp_path):
    from site_backup.copy import CopyOptions, copy_batch
    from site_backup.files import list_batches
    from tests.memory_store import MemoryBlobStore

    # 1,023 characters as a path, 3,063 once each byte that is not UTF-8 is quoted.
    long = b"/".join([b"\xff" * 255] * 4)
    os.makedirs(os.fsencode(tmp_path) + b"/" + long.rsplit(b"/", 1)[0])
    (tmp_path / os.fsdecode(long)).write_bytes(b"1")
    (tmp_path / "ok.").write_bytes(b"2")
    store = MemoryBlobStore()
    entries = [f for b in list_batches(str(tmp_path)).batches for f in b]
    outcomes = {o.path: o for o in copy_batch(str(tmp_path), entries, store, "", CopyOptions())}
    assert outcomes["ok."].status == "uploaded" and list(store.blobs) == ["ok\uff0e"]
    failed = outcomes[os.fsdecode(long)]
    assert failed.status == "failed" and "blob name is 3063 characters long, Azure allows 1024" in failed.reason
