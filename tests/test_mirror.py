"""Mirror mode (--delete-missing) on a real Azurite: the container's current view follows
the tree, history keeps what was deleted, and nothing is deleted after a walk that did not
see the whole tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from flows.backup_site_content import backup_site_content
from flows.restore_site_content import restore_site_content
from site_backup.history import history_container
from site_backup.mirror import attic_folder
from tests.conftest import PROJECT, read_tree
from tests.test_history import runs_of, tree_times


def current_view(storage, container):
    return sorted(b.name for b in storage.container(container).list_blobs())


def test_delete_missing_mirrors_the_tree_and_history_brings_deleted_files_back(storage, checkpoints,
                                                                               container_name, make_tree, tmp_path):
    root = make_tree({"a.txt": b"a", "keep/b.txt": b"bb", "gone/x.txt": b"xxx", "gone/deep/y.txt": b"yyyy",
                      "lone.txt": b"lone, first", "cache/c.log": b"log"})
    first_state = (read_tree(root), tree_times(root))
    backup_site_content(str(root), container=container_name, prefix="site")
    (root / "lone.txt").write_bytes(b"lone, second")  # its first content goes to a snapshot
    second_state = (read_tree(root), tree_times(root))
    backup_site_content(str(root), container=container_name, prefix="site")
    shutil.rmtree(root / "gone")
    (root / "lone.txt").unlink()
    (root / "cache/c.log").unlink()  # excluded by the next run's pattern: its blob stays

    third = backup_site_content(str(root), container=container_name, prefix="site", delete_missing=True,
                                exclude=["*.log"])
    assert third.outcome == "completed" and third.files_deleted == 3
    assert third.bytes_deleted == len(b"xxx") + len(b"yyyy") + len(b"lone, second")
    assert [p.path for p in third.deleted] == ["gone/deep/y.txt", "gone/x.txt", "lone.txt"]
    assert "Deleted:" in third.to_text() and "3 files no longer in the tree" in third.to_text()
    assert current_view(storage, container_name) == ["site/a.txt", "site/cache/c.log", "site/keep/b.txt"]
    # no snapshot is left behind in the backup's container; the attic holds every content
    assert [b.name for b in storage.container(container_name).list_blobs(include=["snapshots"]) if b.snapshot] == []
    history = storage.container(history_container(container_name))
    attic = sorted((b.name, bool(b.snapshot)) for b in history.list_blobs(
        name_starts_with=attic_folder("site"), include=["snapshots"]))
    assert [(n[len(attic_folder("site")):], s) for n, s in attic] == [
        ("site/gone/deep/y.txt", False), ("site/gone/x.txt", False), ("site/lone.txt", False),
        ("site/lone.txt", True)]  # attic/<quoted prefix>/<blob name>

    runs = runs_of(container_name, "site")
    assert len(runs) == 3 and runs[2].files == 2
    for run, state in ((runs[0], first_state), (runs[1], second_state)):
        target = tmp_path / f"restore-{run.run_id[:8]}"
        restored = restore_site_content(container_name, str(target), prefix="site", run_id=run.run_id)
        assert restored.outcome == "completed"
        assert (read_tree(target), tree_times(target)) == state

    # The tree comes back as the first run saw it (same mtimes, same batches): the run after
    # the deletion must not trust the first run's checkpoints, which vouch for deleted blobs.
    restore_site_content(container_name, str(root), prefix="site", run_id=runs[0].run_id, overwrite=True)
    fourth = backup_site_content(str(root), container=container_name, prefix="site")
    assert fourth.batches_from_checkpoint == 0 and fourth.files_uploaded == 3
    assert current_view(storage, container_name) == sorted(f"site/{p}" for p in first_state[0])
    again = backup_site_content(str(root), container=container_name, prefix="site", delete_missing=True)
    assert again.files_deleted == 0 and again.files_uploaded == 0


def test_a_dry_run_deletes_nothing_and_says_what_it_would(storage, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"a", "old.txt": b"old"})
    backup_site_content(str(root), container=container_name)
    (root / "old.txt").unlink()
    dry = backup_site_content(str(root), container=container_name, delete_missing=True, dry_run=True)
    assert dry.files_deleted == 1 and [p.path for p in dry.deleted] == ["old.txt"]
    assert "would be deleted" in dry.to_text() and "Would delete (1):" in dry.to_text()
    assert current_view(storage, container_name) == ["a.txt", "old.txt"]


def test_an_unreadable_folder_blocks_every_deletion(storage, checkpoints, container_name, make_tree, tmp_path):
    """Through the walk users run, in its child process. The tests run as root, where chmod
    000 does not stop a read; a path longer than Linux's PATH_MAX (4096 bytes) is refused to
    root as well: the tree, backed up once, is moved under a folder so deep that the walk
    can no longer read the folder holding locked/.../in.txt."""
    long_name = "d" * 250
    root = make_tree({"a.txt": b"a", f"locked/{long_name}/{long_name}/in.txt": b"in", "old.txt": b"old"})
    backup_site_content(str(root), container=container_name)
    (root / "old.txt").unlink()
    far = tmp_path / "far"
    while len(str(far)) + 251 < 3700:
        far /= "p" * 250
    far /= "p" * (3700 - len(str(far)) - 1)
    far.mkdir(parents=True)
    moved = far / "s"  # root + "/locked/<250>" is readable, one folder further is past PATH_MAX
    root.rename(moved)
    assert len(str(moved / "locked" / long_name)) < 4096 <= len(str(moved / "locked" / long_name / long_name))
    blocked = backup_site_content(str(moved), container=container_name, delete_missing=True)
    assert blocked.outcome == "incomplete" and blocked.files_deleted == 0
    assert blocked.deletion_blocked.startswith(
        f"1 folder or file could not be read (first: locked/{long_name}/{long_name}: "), blocked.deletion_blocked
    assert "File name too long" in blocked.deletion_blocked
    assert "Deleted:      nothing: 1 folder or file could not be read" in blocked.to_text()
    assert current_view(storage, container_name) == [
        "a.txt", f"locked/{long_name}/{long_name}/in.txt", "old.txt"]


def test_command_line_flag(storage, prefect_server, checkpoints, container_name, make_tree):
    root = make_tree({"a.txt": b"a", "old.txt": b"old"})
    backup_site_content(str(root), container=container_name)
    (root / "old.txt").unlink()
    # The session's server: without one the command line starts a temporary server (10-180 s).
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))
    done = subprocess.run([sys.executable, "flows/backup_site_content.py", str(root), "--container", container_name,
                           "--delete-missing", "--json", "--no-progress"], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"files_deleted": 1' in done.stdout
    assert current_view(storage, container_name) == ["a.txt"]


def test_deleting_makes_the_history_container_when_no_run_has_yet(storage, container_name, make_tree):
    """Without a manifest or lock there is no history container yet (credentials that could
    not write it earlier, or the function used alone): the first attic copy makes it."""
    from site_backup.copy import CopyOptions, copy_batch
    from site_backup.accounts import open_store
    from site_backup.destination import Destination
    from site_backup.files import list_batches
    from site_backup.history import open_history_store
    from site_backup.mirror import delete_missing

    root = make_tree({"a.txt": b"a", "old/b.txt": b"bb"})
    destination = Destination.checked(container_name)
    store, history = open_store(destination), open_history_store(destination)
    store.create_container()
    listing = list_batches(str(root))
    for batch in listing.batches:
        copy_batch(listing.root, batch, store, "", CopyOptions(check_remote=False))
    shutil.rmtree(root / "old")
    done = delete_missing(store, history, "", list_batches(str(root)))
    assert (done.deleted, done.failed) == (["old/b.txt"], [])
    attic = storage.container(history_container(container_name)).download_blob(attic_folder("") + "old/b.txt")
    assert attic.readall() == b"bb"


# ---- issue 21: an empty root or too many deletions never empty the destination ----


def _cli(root, container, prefect_server, checkpoints, *extra):
    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(checkpoints))
    return subprocess.run([sys.executable, "flows/backup_site_content.py", str(root), "--container", container,
                           "--no-progress", *extra], cwd=PROJECT, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_an_empty_root_deletes_nothing_and_the_refused_run_is_no_restore_point(storage, prefect_server, checkpoints,
                                                                               container_name, make_tree, tmp_path):
    """The unmounted share: a 23-file tree backed up, then the same command with an empty
    folder as ROOT and --delete-missing. It used to exit 0 having deleted all 23 blobs, and
    a prune keeping the 3 newest runs then dropped the first run's snapshots."""
    from flows.prune_backups import prune_backups

    files = {f"d{i % 4}/page-{i:02d}.html": f"page {i}".encode() for i in range(23)}
    root = make_tree(files)
    first = backup_site_content(str(root), container=container_name, prefix="site")
    assert first.files_uploaded == 23
    empty = tmp_path / "unmounted"
    empty.mkdir()
    for extra in ((), ("--dry-run",)):  # a dry run decides the same
        refused = _cli(empty, container_name, prefect_server, checkpoints, "--prefix", "site", "--delete-missing",
                       *extra)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "Deleted:      nothing, refused: see Error" in refused.stdout
        assert ("Error:        --delete-missing deleted nothing: the walk found no file in the root, while the "
                "destination holds 23 files this run would delete") in refused.stdout
        assert "pass --max-delete 100%" in refused.stdout
    assert current_view(storage, container_name) == sorted(f"site/{p}" for p in files)
    assert len(runs_of(container_name, "site")) == 1  # a refused run writes no manifest
    pruned = prune_backups(container_name, prefix="site", keep_last=3)
    assert pruned.manifests_deleted == 0 and pruned.snapshots_deleted == 0
    target = tmp_path / "restored"
    restored = restore_site_content(container_name, str(target), prefix="site",
                                    run_id=runs_of(container_name, "site")[0].run_id)
    assert restored.outcome == "completed" and read_tree(target) == files


def test_more_deletions_than_max_delete_delete_nothing_until_allowed(storage, prefect_server, checkpoints,
                                                                     container_name, make_tree):
    from site_backup.summary import RunFailed

    import pytest

    root = make_tree({f"f{i}.txt": b"x" * i for i in range(10)})
    backup_site_content(str(root), container=container_name)
    for i in range(6):
        (root / f"f{i}.txt").unlink()
    with pytest.raises(RunFailed) as ended:  # 6 of 10 is more than the default 50%
        backup_site_content(str(root), container=container_name, delete_missing=True)
    refused = ended.value.summary
    assert (refused.outcome, refused.exit_code, refused.files_deleted) == ("failed", 2, 0)
    assert "would delete 6 of the destination's 10 files (60%), more than --max-delete 50% allows" in refused.error
    assert "pass --max-delete 6" in refused.error
    assert len(current_view(storage, container_name)) == 10 and len(runs_of(container_name, "")) == 1
    done = _cli(root, container_name, prefect_server, checkpoints, "--delete-missing", "--max-delete", "6", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"files_deleted": 6' in done.stdout
    assert current_view(storage, container_name) == [f"f{i}.txt" for i in range(6, 10)]
    bad = _cli(root, container_name, prefect_server, checkpoints, "--delete-missing", "--max-delete", "half")
    assert bad.returncode == 2 and "--max-delete 'half' is neither a count of files" in bad.stderr
    alone = _cli(root, container_name, prefect_server, checkpoints, "--max-delete", "5")
    assert alone.returncode == 2 and "give --delete-missing too" in alone.stderr
