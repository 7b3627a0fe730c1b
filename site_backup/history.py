"""History of a backup: one manifest per run (restoring the tree a run saw: history_restore.py).

Where history lives: a companion container, `<container>-history` (see history_container),
never the backup's own container. There a manifest cannot collide with a backed-up file
(whatever names a tree holds, `.site-backup` included), and the backup's container keeps
holding exactly the tree: rclone (`rclone check` reports 0 differences), AzCopy, verify and
restore list it as before, with no filter to remember. Snapshots do not show in a plain
listing either (List Blobs shows them only with include=snapshots). The locks
(site_backup/locks.py) live in the companion container too.

A manifest is `runs/<prefix, quoted>/<start time>-<run id>.jsonl.gz`: gzip of JSON lines,
one per file backed up (`p` path, `s` size, `m` Content-MD5 in base64, `t` mtime in ns,
`v` the version written when the account keeps versions), then one `{"run": {...}}` line
with the run's id, times, source and summary. The same facts for listing travel as the
blob's metadata. It is streamed (staged as blocks while the batches finish) and appears
only at Put Block List, which creates it and never replaces a blob (If-None-Match: *): a
run killed before its end leaves no manifest, only uncommitted blocks that Azure discards
after a week.

Where a file's content lives for an old run: the manifest names the blob and its MD5. The
current blob, else the earliest snapshot (or version) with that size and MD5, holds it:
a later run snapshotted the blob before replacing it (copy.keep_previous_content).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import uuid
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple, Protocol
from urllib.parse import quote, unquote

from .errors import ConfigurationError, describe, error_code
from .files import Problem, display_path
from .names import attic_folder, blob_name
from .remote import RemoteLookup
from .units import MiB

_json_string = json.encoder.encode_basestring_ascii  # a str as a JSON string, in ASCII
MANIFEST_FORMAT = "1"
MANIFEST_TYPE = "application/gzip"


def history_container(container: str) -> str:
    """The companion container of `container`: `<container>-history`, or, when that would
    pass Azure's 63 characters, the start of the name, a hash of all of it and `-history`."""
    name = f"{container}-history"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(container.encode()).hexdigest()[:8]
    return f"{container[:46].rstrip('-')}-{digest}-history"


def runs_folder(prefix: str) -> str:
    """Where the manifests of one destination prefix go, as one name segment ('/' quoted:
    prefix 'a' and 'a/b' never share a folder, '' is its own)."""
    return f"runs/{quote('/' + prefix, safe='')}/"


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class RunRecord:
    """One backup run, from its manifest's metadata."""

    run_id: str
    started: dt.datetime
    finished: dt.datetime
    outcome: str
    files: int
    bytes: int
    manifest: str  # blob name in the history container
    manifest_size: int = 0

    def as_row(self) -> dict:
        return {"started": iso(self.started), "finished": iso(self.finished), "run_id": self.run_id,
                "files": self.files, "bytes": self.bytes, "outcome": self.outcome, "manifest": self.manifest,
                "manifest_bytes": self.manifest_size}


class BatchFiles(Protocol):
    """What a manifest reads of a finished batch (a copy.BatchResult)."""

    @property
    def entries(self) -> list[tuple] | None: ...

    @property
    def failed(self) -> list[Problem]: ...

    @property
    def skipped(self) -> list[Problem]: ...


class ManifestWriter:
    """Streams one run's manifest into the history container: lines are gzipped as the
    batches finish and staged as blocks of about `block_size`, so memory stays at one block
    whatever the number of files; `finish` commits it, once."""

    def __init__(self, store, prefix: str, run_id: str, started: dt.datetime, block_size: int = 4 * MiB,
                 backup_store=None, name: str | None = None):
        self.store, self.prefix, self.run_id, self.started = store, prefix, run_id, started
        self.backup_store = backup_store  # to look up files of checkpoints without entries
        # A shard of a sharded run stages its part into the sharded run's manifest (`name`).
        self.name = name or f"{runs_folder(prefix)}{_stamp(started)}-{run_id}.jsonl.gz"
        self.block_size = block_size
        self._zip = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip stream
        self._buffer = bytearray()
        self._blocks: list[str] = []
        self._md5 = hashlib.md5()
        self._upload = uuid.uuid4().hex[:16]
        self.files = self.bytes = self.size = 0
        self._record: RunRecord | None = None
        self.broken = ""  # why the manifest could not be written: the backup goes on without it

    def add_batch(self, result: BatchFiles, batch: Iterable) -> None:
        """The files of one finished batch that were backed up. A checkpoint from before
        manifests existed has no entries: those files are looked up in the backup. A
        storage error here (after the requests' own retries) gives up the manifest, never
        the backup: `broken` says why."""
        if self.broken:
            return
        try:
            self._add(result, batch)
        except Exception as exc:
            self.broken = describe(exc)

    def _add(self, result: BatchFiles, batch: Iterable) -> None:
        entries = getattr(result, "entries", None)
        if entries is None:
            entries = self._look_up(result, batch, self.backup_store)
        lines = []
        for path, size, md5, mtime_ns, version in entries:
            # One line per file, formatted here and compressed per batch: json.dumps and a
            # compress call per line cost three times as much. Paths are JSON strings in
            # ASCII, so names that are not UTF-8 (surrogate escapes) survive as \udcXX.
            m = f'"{base64.b64encode(md5).decode()}"' if md5 else "null"
            t = "null" if mtime_ns is None else mtime_ns
            v = f',"v":{_json_string(version)}' if version else ""
            lines.append(f'{{"p":{_json_string(path)},"s":{size},"m":{m},"t":{t}{v}}}\n')
            self.files += 1
            self.bytes += size
        self._feed("".join(lines).encode("ascii"))

    def _look_up(self, result: BatchFiles, batch: Iterable, store) -> list[tuple]:
        if store is None:
            return []
        left_out = {p.path for p in list(result.failed) + list(result.skipped)}
        files = [f for f in batch if display_path(f.path) not in left_out]
        remote = RemoteLookup(store, (blob_name(self.prefix, f.path) for f in files))
        found = []
        for f in files:
            blob = remote.get(blob_name(self.prefix, f.path))
            if blob is not None and blob.size == f.size:
                found.append((f.path, f.size, blob.content_md5, f.mtime_ns, blob.version_id))
        return found

    def _write(self, line: dict) -> None:
        self._feed(json.dumps(line, separators=(",", ":")).encode("ascii") + b"\n")

    def _feed(self, data: bytes) -> None:
        self._buffer += self._zip.compress(data)
        if len(self._buffer) >= self.block_size:
            self._stage(bytes(self._buffer))
            self._buffer.clear()

    def _stage(self, data: bytes) -> None:
        block_id = base64.b64encode(f"{self._upload}{len(self._blocks):06d}".encode()).decode()
        try:
            self.store.stage_block(self.name, block_id, data)
        except Exception as exc:
            if error_code(exc) != "ContainerNotFound":
                raise
            self.store.create_container()  # the first run with history: made once, here
            self.store.stage_block(self.name, block_id, data)
        self._blocks.append(block_id)
        if self._md5 is not None:
            self._md5.update(data)
        self.size += len(data)

    def finish_part(self) -> dict:
        """A shard's end: its lines staged as one whole gzip member, nothing committed.
        Returns what the sharded run commits: the blocks, in order, and their counts."""
        self._buffer += self._zip.flush()
        self._stage(bytes(self._buffer))
        self._buffer.clear()
        return {"name": self.name, "blocks": list(self._blocks), "files": self.files, "bytes": self.bytes,
                "size": self.size}

    def finish_parts(self, parts: list[dict], summary: dict, source: str, destination: str,
                     finished: dt.datetime) -> RunRecord:
        """A sharded run's end: one manifest of the shards' staged parts (each a gzip member;
        a manifest is their concatenation, as gzip allows), then this run's own line."""
        if self._record is None:
            self._blocks = [b for part in parts for b in part["blocks"]]
            self.files, self.bytes = sum(p["files"] for p in parts), sum(p["bytes"] for p in parts)
            self.size = sum(p["size"] for p in parts)
            self._md5 = None  # the shards' bytes are not here: each member's CRC-32 checks them on reading
        return self.finish(summary, source, destination, finished)

    def finish(self, summary: dict, source: str, destination: str, finished: dt.datetime) -> RunRecord:
        """Write the run's own line and commit the manifest; returns its record. Called
        again after a failed commit (a retry), it commits the same blocks again."""
        if self._record is not None:
            self._commit(self._record)
            return self._record
        run = {"run_id": self.run_id, "started": iso(self.started), "finished": iso(finished), "source": source,
               "destination": destination, "prefix": self.prefix, "files": self.files, "bytes": self.bytes,
               "format": MANIFEST_FORMAT, "summary": summary}
        self._write({"run": run})
        self._buffer += self._zip.flush()
        self._stage(bytes(self._buffer))
        self._buffer.clear()
        outcome = summary.get("outcome", "")
        self._record = RunRecord(self.run_id, self.started, finished, outcome, self.files, self.bytes, self.name,
                                 self.size)
        self._commit(self._record)
        return self._record

    def _commit(self, run: RunRecord) -> None:
        metadata = {"runid": run.run_id, "started": iso(run.started), "finished": iso(run.finished),
                    "outcome": run.outcome, "files": str(run.files), "bytes": str(run.bytes),
                    "format": MANIFEST_FORMAT}
        try:
            self.store.commit_new(self.name, self._blocks, md5=self._md5.digest() if self._md5 else None,
                                  content_type=MANIFEST_TYPE,
                                  metadata=metadata)
        except Exception as exc:
            # The name holds this run's id: a blob there is this commit, landed while its
            # answer was lost.
            if error_code(exc) != "BlobAlreadyExists" and "BlobAlreadyExists" not in str(exc):
                raise


def open_history_store(destination, budget=None):
    """The BlobStore of the destination's companion container; `budget` (the run's)
    decides its retries, as for the backup's own requests."""
    from dataclasses import replace

    from .accounts import open_store

    return open_store(replace(destination, container=history_container(destination.container)), budget)


def list_runs(history_store, prefix: str) -> list[RunRecord]:
    """Every run of this destination that wrote a manifest, oldest first."""
    return runs_by_prefix(history_store, runs_folder(prefix)).get(prefix, [])


def runs_by_prefix(history_store, folder: str = "runs/") -> dict[str, list[RunRecord]]:
    """The runs of every destination (prefix) whose manifests are under `folder`, each
    destination's oldest first: one listing of the manifests' metadata."""
    found: dict[str, list[RunRecord]] = {}
    try:
        for name, size, meta in history_store.list_metadata(folder):
            if not name.endswith(".jsonl.gz") or "runid" not in meta or not name.startswith("runs/%2F"):
                continue
            try:
                run = RunRecord(meta["runid"], parse_iso(meta["started"]), parse_iso(meta["finished"]),
                                meta.get("outcome", ""), int(meta.get("files", 0)), int(meta.get("bytes", 0)),
                                name, size)
            except (KeyError, ValueError):
                continue  # not one of ours
            found.setdefault(unquote(name.split("/", 2)[1])[1:], []).append(run)
    except Exception as exc:
        if error_code(exc) != "ContainerNotFound":
            raise
    return {prefix: sorted(runs, key=lambda r: (r.started, r.run_id)) for prefix, runs in found.items()}


_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def parse_as_of(text: str) -> dt.datetime:
    """A point in time from ISO 8601 (`2026-11-28T22:15:00Z`, `2026-11-28 22:15+01:00`) or a
    date (`2026-11-28`: the end of that day). Without an offset, UTC."""
    text = text.strip()
    try:
        if _DATE.fullmatch(text):
            day = dt.date.fromisoformat(text)
            when = dt.datetime.combine(day, dt.time.max)
        else:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"--as-of {text!r} is not a date or time: give ISO 8601, e.g. 2026-11-28 or 2026-11-28T22:15:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def pick_run(runs: list[RunRecord], run_id: str | None = None, as_of: str | None = None) -> RunRecord:
    """The run `run_id` names (its id or a unique start of it), or the last run finished by
    `as_of`. Raises ConfigurationError naming the fix when there is none."""
    if not runs:
        raise ConfigurationError("this destination has no backup history yet: run a backup first "
                                 "(history starts with the first backup that writes a manifest)")
    if run_id:
        found = [r for r in runs if r.run_id.startswith(run_id.strip().lower())]
        if len(found) == 1:
            return found[0]
        what = "no run" if not found else f"{len(found)} runs"
        raise ConfigurationError(f"--run {run_id!r} matches {what}: give a run id from --list")
    when = parse_as_of(as_of or "")
    before = [r for r in runs if r.finished <= when]
    if not before:
        raise ConfigurationError(f"no backup finished by {iso(when)}: the first finished at {iso(runs[0].finished)} "
                                 f"(see --list)")
    return before[-1]


def read_manifest(history_store, name: str) -> Iterator[dict]:
    """The lines of a manifest, decompressed as they are downloaded; the last is the run's
    own (`{"run": ...}`). Raises ValueError when the manifest does not end with it. A
    sharded run's manifest is several gzip members, one after the other."""
    unzip = zlib.decompressobj(31)
    tail = b""
    last = None
    for chunk in history_store.read(name):
        data = unzip.decompress(chunk)
        while unzip.eof and unzip.unused_data:  # the next member
            rest, unzip = unzip.unused_data, zlib.decompressobj(31)
            data += unzip.decompress(rest)
        data = tail + data
        lines = data.split(b"\n")
        tail = lines.pop()
        for raw in lines:
            if raw:
                last = json.loads(raw)
                yield last
    data = tail + unzip.flush()
    for raw in data.split(b"\n"):
        if raw:
            last = json.loads(raw)
            yield last
    if not (isinstance(last, dict) and "run" in last):
        raise ValueError(f"manifest {name} is incomplete: it does not end with the run's line")


class AtticBlob(NamedTuple):
    """A copy of a deleted blob's content in the history container (mirror mode), named
    after the blob it was."""

    name: str
    size: int
    content_md5: bytes | None
    snapshot: str | None = None
    version_id: str | None = None
    current: bool = False
    attic: bool = True
    tier: str | None = None


def attic_kept(history_store, prefix: str) -> Iterator[AtticBlob]:
    """What --delete-missing kept of deleted blobs, by the names they had."""
    folder = attic_folder(prefix)
    try:
        for k in history_store.list_kept(folder):
            yield AtticBlob(k.name[len(folder):], k.size, k.content_md5, k.snapshot, tier=k.tier)
    except Exception as exc:
        if error_code(exc) != "ContainerNotFound":
            raise
