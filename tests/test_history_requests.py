"""What a no-change run sends, counted at a proxy in front of Azurite: reads of the backup's
container, and in the history container one manifest plus the run's lock, nothing else."""

from __future__ import annotations

from collections import Counter

from flows.backup_site_content import backup_site_content
from site_backup.credentials import azurite_connection_string
from site_backup.history import history_container
from tests.faultproxy import FaultProxy


def test_a_no_change_run_writes_one_manifest_and_nothing_else(azurite, checkpoints, container_name, make_tree,
                                                              monkeypatch):
    root = make_tree({f"d{i % 3}/f{i}.txt": b"x" * (i + 1) for i in range(30)})
    with FaultProxy(azurite.port) as proxy:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           azurite_connection_string(f"http://127.0.0.1:{proxy.port}/devstoreaccount1"))
        backup_site_content(str(root), container=container_name)
        proxy.log.clear()
        again = backup_site_content(str(root), container=container_name)
        log = list(proxy.log)
    assert again.files_unchanged == 30 and again.bytes_uploaded == 0
    writes = [(method, path.split("/", 1)[0], comp) for method, path, comp in log if method in ("PUT", "DELETE")]
    history = history_container(container_name)
    # nothing written to the backup's container: its Create Container finds it there (409)
    # and changes nothing
    assert [w for w in writes if w[1] != history] == [("PUT", container_name, "container")]
    writes = [w for w in writes if w[1] == history]
    manifest = [path for method, path, comp in log if method == "PUT" and comp == "blocklist"]
    assert len(manifest) == 1 and manifest[0].startswith(f"{history}/runs/")
    # the rest: the run's lock blob made, leased, deleted; the manifest's one block
    # ("", twice: the lock's Put Blob and its Delete Blob)
    assert Counter(w[2] for w in writes) == Counter({"": 2, "lease": 1, "block": 1, "blocklist": 1})
    print(f"\nno-change run: {len(log)} requests, {len(writes)} writes: {sorted(Counter(writes).items())}")
