"""What each flow shows in the Prefect UI, read back through the Prefect API: one INFO line
when it starts and one when it ends, and its summary as a markdown artifact (prune's with
the kept and deleted runs and the bytes freed, restore's with the run it restored)."""

from __future__ import annotations

import asyncio

from flows.backup_site_content import backup_site_content
from flows.prune_backups import prune_backups
from flows.restore_site_content import restore_site_content
from flows.verify_backup import verify_backup
from site_backup.destination import Destination
from site_backup.history import list_runs, open_history_store
from tests.conftest import flow_run_messages, read_tree


def artifacts(state) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))

    return {a.key: a for a in asyncio.run(read())}


def test_verify_restore_and_prune_announce_start_and_end_and_publish_their_summary(
        storage, checkpoints, container_name, make_tree, tmp_path):
    root = make_tree({"a.txt": b"first", "b/c.txt": b"same"})
    backup_site_content(str(root), container=container_name)
    first = read_tree(root)
    (root / "a.txt").write_bytes(b"second version")
    state, lines = flow_run_messages(lambda: backup_site_content(str(root), container=container_name,
                                                                 return_state=True))
    assert any(m.startswith("Backing up ") and "2 files" in m and "in 1 batch;" in m for m in lines), lines
    assert any(m.startswith("Backup completed: 2 files, 1 uploaded") for m in lines), lines
    assert artifacts(state)["backup-summary"].description.startswith("Backup completed: 1 file uploaded")

    state, lines = flow_run_messages(lambda: verify_backup(str(root), container=container_name, return_state=True),
                                     until="Verify result")
    assert any(m.startswith(f"Verifying {root} (2 files") for m in lines), lines
    assert any(m.startswith("Verify result: verified, 2 files: 2 match, 0 missing") for m in lines), lines
    assert "verify-summary" in artifacts(state)

    runs = list_runs(open_history_store(Destination.checked(container_name)), "")
    oldest = runs[0]
    target = tmp_path / "restored"
    state, lines = flow_run_messages(lambda: restore_site_content(
        container_name, str(target), run_id=oldest.run_id[:8], return_state=True), until="Restore completed")
    assert read_tree(target) == first
    named = f"backup run {oldest.run_id}, finished "
    assert any(m.startswith(f"Restoring {named}") and "(2 files" in m for m in lines), lines
    assert any(m.startswith(f"Restore completed of {named}") for m in lines), lines
    restored = artifacts(state)["restore-summary"]
    assert named in restored.data and named in restored.description

    state, lines = flow_run_messages(lambda: prune_backups(container_name, keep_last=1, dry_run=True,
                                                           return_state=True), until="Prune completed")
    assert any(m.startswith("Dry run of pruning ") and m.endswith("keep --keep-last 1") for m in lines), lines
    assert any(m.startswith("Prune completed (dry run): kept 1 run, would delete 1 run and 1 snapshot (")
               for m in lines), lines
    summary = artifacts(state)["prune-summary"]
    assert "Kept (1):" in summary.data and "Would delete (1):" in summary.data and "Freed:" in summary.data
    assert oldest.run_id in summary.data.split("Would delete (1):")[1]


def test_the_progress_artifact_carries_its_counts_from_the_request_that_creates_it():
    """customStatus (the HTTP status API) reads the counts before the first batch ends."""
    from prefect import flow

    from tasks.report import ProgressArtifact

    @flow
    def shows_progress() -> str:
        return str(ProgressArtifact(12, 3_000, counting=True).id)

    state = shows_progress(return_state=True)
    progress = artifacts(state)["backup-progress"]
    assert str(progress.id) == state.result()
    assert progress.metadata_ == {"files_done": "0", "files_total": "12", "bytes_done": "0", "bytes_total": "3000"}
    assert progress.data == 0.0 and progress.description == "0 of 12 files, 0 B of 2.9 KiB found so far (counting)"
