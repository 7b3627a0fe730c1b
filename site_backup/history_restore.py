"""Restoring a tree as an earlier run saw it: from the run's manifest (history.py), each
file's content from the blob, a snapshot, a version or the attic that still holds it."""

from __future__ import annotations

import base64

from .files import Batch, Problem, display_path, make_batches
from .history import RunRecord, attic_kept, read_manifest
from .names import attic_folder, blob_folder, blob_name
from .restore import BlobEntry, RestorePlan, unsafe_name_reason
from .tiers import is_archived


KEPT_PREFIX = ("snapshot:", "version:", "attic:")


def read_kept(store, history_store=None, prefix: str = ""):
    """A download function for restore: `(name)` reads the blob, `(name, where)` the
    snapshot (`snapshot:<time>`) or version (`version:<id>`) that holds a run's content,
    or the copy kept when --delete-missing deleted the blob (`attic:` and its snapshot
    time, if any, in the history container)."""

    def read(name: str, where: str | None = None):
        if not where:
            return store.read(name)
        kind, _, value = where.partition(":")
        if kind == "attic":
            return history_store.read_kept(attic_folder(prefix) + name, snapshot=value or None)
        return store.read_kept(name, snapshot=value) if kind == "snapshot" else store.read_kept(name, version_id=value)

    return read


def plan_run_restore(history_store, run: RunRecord, backup_store, prefix: str, max_files: int,
                     max_bytes: int) -> RestorePlan:
    """Batches that restore the tree as `run` saw it: every file of its manifest, each from
    the current blob when that still holds the run's content (same size and MD5), else from
    the earliest snapshot or version that does. A file whose content is no longer stored,
    or whose path would leave the target, is refused."""
    plan = RestorePlan()
    wanted: list[dict] = []
    versions = False
    for line in read_manifest(history_store, run.manifest):
        if "run" in line:
            continue
        reason = unsafe_name_reason(line["p"])
        if reason:
            plan.refused.append(Problem(display_path(line["p"]), f"refused, would not stay inside the target: {reason}"))
            continue
        versions = versions or bool(line.get("v"))
        wanted.append(line)
    # What is kept for each blob name: the blob, its snapshots, its versions.
    kept: dict[str, list] = {}
    for k in backup_store.list_kept(blob_folder(prefix), versions=versions):
        kept.setdefault(k.name, []).append(k)
    for k in attic_kept(history_store, prefix):
        kept.setdefault(k.name, []).append(k)
    entries = []
    for line in wanted:
        name = blob_name(prefix, line["p"])
        md5 = base64.b64decode(line["m"]) if line.get("m") else None
        where = _where(kept.get(name, []), line["s"], md5, line.get("v"))
        if where is None:
            plan.refused.append(Problem(display_path(line["p"]), "its content as of this run is no longer stored "
                                        "(pruned, or replaced by another tool without a snapshot)"))
            continue
        entries.append(BlobEntry(line["p"], line["s"], name, md5, line.get("t"), where or None,
                                 _archived(kept.get(name, []), where)))
    plan.batches = [Batch(b) for b in make_batches(entries, max_files, max_bytes)]
    return plan


def _archived(candidates: list, where: str) -> bool:
    """Whether what `where` names is listed in the Archive tier (unreadable until rehydrated)."""
    kind, _, value = where.partition(":")
    for k in candidates:
        attic = getattr(k, "attic", False)
        if (not where and k.current and not k.snapshot and not attic
                or kind == "snapshot" and k.snapshot == value and not attic
                or kind == "version" and k.version_id == value
                or kind == "attic" and attic and (k.snapshot or "") == value):
            return is_archived(k.tier)
    return False


def _where(candidates: list, size: int, md5: bytes | None, version: str | None) -> str | None:
    """'' for the current blob, 'snapshot:<t>', 'version:<id>' or 'attic:[<t>]', or None
    when nothing kept has this content."""
    if version and any(k.version_id == version for k in candidates):
        return f"version:{version}"
    current = [k for k in candidates if k.current and not k.snapshot]
    if any(k.size == size and (md5 is None or k.content_md5 == md5) for k in current):
        return ""
    if md5 is None:
        return None  # without an MD5 an older copy cannot be told apart
    older = sorted((k for k in candidates if not (k.current and not k.snapshot)
                    and k.size == size and k.content_md5 == md5),
                   key=lambda k: (getattr(k, "attic", False), k.snapshot or k.version_id or ""))
    if not older:
        return None
    k = older[0]
    if getattr(k, "attic", False):
        return f"attic:{k.snapshot or ''}"
    return f"snapshot:{k.snapshot}" if k.snapshot else f"version:{k.version_id}"


def check_run(history_store, run: RunRecord, backup_store, prefix: str) -> tuple[int, list[Problem]]:
    """(files whose content is still stored, the others with why): each file of the run
    has the blob, a snapshot or a version with its recorded size and Content-MD5."""
    plan = plan_run_restore(history_store, run, backup_store, prefix, 10**6, 2**62)
    return plan.files, plan.refused
