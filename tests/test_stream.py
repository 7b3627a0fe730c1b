"""Streaming from the walk to the copies: the same batches and checkpoint keys as the whole
listing, the first upload before the walk ends, and a walk never far ahead of the copies."""

from __future__ import annotations

import os
import threading
import time

import pytest

from site_backup.copy import CopyOptions
from site_backup.destination import Destination
from site_backup.batch_order import DRY_RUN_BATCHES_PER_TASK, heaviest_first_within, joined
from site_backup.files import Batch, FileEntry, heaviest_first, list_batches, open_listing, stream_batches
from tasks.copy_batch import batch_checkpoint_key
from tests.conftest import flow_run_messages


def tree_of(count: int, folders: int = 4) -> dict[str, bytes]:
    return {f"d{i % folders}/f{i:04d}.txt": f"file {i} ".encode() * (1 + i % 7) for i in range(count)}


def keys(batches, destination=Destination("c")) -> list[str]:
    return [batch_checkpoint_key(None, {"options": CopyOptions(), "destination": destination, "batch": b})
            for b in batches]


def test_streamed_batches_are_the_whole_listings_batches_with_the_same_checkpoint_keys(make_tree):
    root = make_tree(tree_of(500))
    whole = list_batches(str(root), max_files=7, max_bytes=2_000)
    listing = open_listing(str(root))
    streamed = list(stream_batches(listing, max_files=7, max_bytes=2_000))
    assert sorted(keys(streamed)) == sorted(keys(whole.batches)) and len(streamed) == len(whole.batches) > 50
    assert (listing.files, listing.bytes, listing.batch_count) == (whole.files, whole.bytes, len(whole.batches))
    assert (listing.files, listing.walking, listing.batches) == (500, False, [])


def test_a_streamed_listing_counts_as_it_goes(make_tree):
    listing = open_listing(str(make_tree(tree_of(100))))
    batches = stream_batches(listing, max_files=10)
    first = next(batches)
    assert listing.walking and listing.files == len(first) < 100
    rest = list(batches)
    assert not listing.walking and listing.files == 100 == len(first) + sum(map(len, rest))


def batch(name: str, size: int) -> Batch:
    return Batch([FileEntry(name, size, 0)])


def test_heaviest_first_within_a_window_as_large_as_the_stream_is_heaviest_first():
    batches = [batch(f"b{i}", (i * 7919) % 1000 * 10_000) for i in range(20)]
    assert list(heaviest_first_within(iter(batches), 20)) == heaviest_first(batches)
    assert list(heaviest_first_within(iter(batches), 1)) == batches  # a window of 1 keeps walk order


def test_heaviest_first_within_holds_no_more_than_its_window():
    pulled = []

    def walk():
        for i in range(100):
            pulled.append(i)
            yield batch(f"b{i:03d}", i % 10)

    out = []
    for b in heaviest_first_within(walk(), 5):
        out.append(b)
        assert len(pulled) - len(out) <= 4  # held: at most the window, one of which just came out
    assert sorted(b[0].path for b in out) == [f"b{i:03d}" for i in range(100)]


def test_joined_batches_keep_every_file_in_order_and_count_the_walks_batches():
    batches = [Batch([FileEntry(f"b{i}/f{j}", i + j, 0) for j in range(i % 3 + 1)]) for i in range(19)]
    out = list(joined(iter(batches), 8))
    assert [len(b) for b in out] == [sum(map(len, batches[k:k + 8])) for k in (0, 8, 16)]
    assert [f for b in out for f in b] == [f for b in batches for f in b]
    assert [b.parts for b in out] == [8, 8, 3] and [b.bytes for b in out] == [
        sum(b.bytes for b in batches[k:k + 8]) for k in (0, 8, 16)]
    assert list(joined(iter(batches), 1)) == batches and list(joined(iter([]), 8)) == []
    with pytest.raises(ValueError):
        list(joined(iter(batches), 0))


# ---- the flow ----------------------------------------------------------------------------

def test_a_dry_run_copies_32_batches_a_task_and_reports_the_walks_batches(storage, checkpoints, container_name,
                                                                              make_tree, monkeypatch):
    import tasks.copy_batch
    from flows.backup_site_content import backup_site_content

    root = make_tree(tree_of(300))
    copy_files, calls = tasks.copy_batch.copy_files, []

    def counted_copy(root, batch, *args, **kwargs):
        calls.append(len(batch))
        return copy_files(root, batch, *args, **kwargs)

    monkeypatch.setattr(tasks.copy_batch, "copy_files", counted_copy)
    walked = len(list_batches(str(root), max_files=6).batches)
    summary = backup_site_content(str(root), container=container_name, files_per_batch=6, dry_run=True)
    assert DRY_RUN_BATCHES_PER_TASK == 32 and walked > 32
    assert len(calls) == -(-walked // 32) and sum(calls) == 300
    assert (summary.batches, summary.files_uploaded, summary.files_total) == (walked, 300, 300)
    assert len(os.listdir(checkpoints)) == 1  # the run's own result: no batch leaves a checkpoint or a result
    real = backup_site_content(str(root), container=container_name, files_per_batch=6)
    assert len(calls) == -(-walked // 32) + walked and real.batches == walked  # a real run: a task a batch


def test_the_first_upload_happens_while_the_walk_still_runs(storage, checkpoints, container_name, make_tree,
                                                            monkeypatch):
    """The walk stops three quarters of the way through and waits for a blob in the container:
    with the whole tree listed before any copy (as before streaming) none would come."""
    import tasks.list_files
    from flows.backup_site_content import backup_site_content

    tree = tree_of(400)
    root = make_tree(tree)
    walk, seen = tasks.list_files.ChildWalk, {}

    def walk_that_waits_for_a_blob(*args, **kwargs):
        walked = 0
        for batch in walk(*args, **kwargs):
            walked += len(batch)
            if walked >= 300 and "blob" not in seen:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and "blob" not in seen:
                    blobs = list(storage.container(container_name).list_blobs())
                    if blobs:
                        seen["blob"], seen["walk went on"] = blobs[0].name, False
                    time.sleep(0.05)
            seen.setdefault("walk went on", True)
            yield batch

    monkeypatch.setattr(tasks.list_files, "ChildWalk", walk_that_waits_for_a_blob)
    summary = backup_site_content(str(root), container=container_name, files_per_batch=5)
    assert seen.get("blob") in tree, "no blob appeared while the walk was held"
    assert (summary.outcome, summary.files_uploaded, summary.files_total) == ("completed", 400, 400)


def test_the_walk_is_never_more_than_a_bounded_number_of_batches_ahead(storage, checkpoints, container_name,
                                                                        make_tree, monkeypatch):
    import tasks.copy_batch
    import tasks.list_files
    from flows.backup_site_content import backup_site_content

    root = make_tree(tree_of(600))
    lock, counts, ahead = threading.Lock(), {"walked": 0, "copied": 0}, []
    stream, copy_files = tasks.list_files.ChildWalk, tasks.copy_batch.copy_files

    def counted_stream(*args, **kwargs):
        for b in stream(*args, **kwargs):
            with lock:
                counts["walked"] += 1
                ahead.append(counts["walked"] - counts["copied"])
            yield b

    def slow_copy(*args, **kwargs):
        time.sleep(0.02)  # copies slower than the walk, which would otherwise finish first
        outcomes = copy_files(*args, **kwargs)
        with lock:
            counts["copied"] += 1
        return outcomes

    monkeypatch.setattr(tasks.list_files, "ChildWalk", counted_stream)
    monkeypatch.setattr(tasks.copy_batch, "copy_files", slow_copy)
    summary = backup_site_content(str(root), container=container_name, files_per_batch=4)
    # 4 copy tasks at once: 8 in flight or queued, and a look-ahead window of 8.
    assert counts["walked"] == counts["copied"] == summary.batches > 100
    assert 8 < max(ahead) <= 16, max(ahead)
    assert (summary.outcome, summary.files_uploaded, summary.files_total) == ("completed", 600, 600)


def test_a_streamed_run_writes_the_checkpoints_of_todays_whole_listing(storage, checkpoints, container_name,
                                                                        make_tree):
    """Backups made before streaming stay 'from checkpoint': the keys are those of the whole list."""
    from flows.backup_site_content import backup_site_content

    root = make_tree(tree_of(300))
    summary = backup_site_content(str(root), container=container_name, files_per_batch=6)
    assert summary.batches == len(list_batches(str(root), max_files=6).batches) > 30
    assert len(os.listdir(checkpoints)) >= summary.batches
    again = backup_site_content(str(root), container=container_name, files_per_batch=6)
    assert (again.batches_from_checkpoint, again.files_unchanged) == (summary.batches, 300)


@pytest.mark.parametrize("count", [30, 3000])
def test_the_log_says_what_is_backed_up_before_and_after_the_walk(storage, checkpoints, container_name, make_tree,
                                                                  count):
    from flows.backup_site_content import backup_site_content

    root = make_tree(tree_of(count))
    _, text = flow_run_messages(lambda: backup_site_content(
        str(root), container=container_name, files_per_batch=100, dry_run=True, return_state=True))
    if count == 30:  # walked whole within the look-ahead: the totals come first, as before streaming
        assert any(m.startswith(f"Dry run of {root} (30 files") for m in text), text
        assert not any(m.startswith("Listed") for m in text), text
    else:
        assert any(m.startswith(f"Dry run of {root} to ") and "counting files as the copies go" in m
                   for m in text), text
        assert any(m.startswith(f"Listed {root}: 3000 files") for m in text), text
    assert any(m.startswith(f"Backup completed: {count} files, {count} would upload") for m in text), text

