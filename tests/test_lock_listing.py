"""Every backup lists the locks: on the direct requests, checked against the SDK's listing."""

from __future__ import annotations

import uuid

from site_backup.accounts import open_store
from site_backup.destination import Destination
from site_backup.azure_store import AzureBlobStore


def test_lock_listing_on_the_direct_requests_equals_the_sdks(storage, container_name):
    container = storage.container(container_name)
    container.create_container()
    for name in ("locks/%2F/backup-a.1", "locks/%2Fx/prune-b.2", "locks/%2F/backup-c.3"):
        container.upload_blob(name, b"", metadata={"runid": name[-3], "host": "h", "pid": "7"})
    container.get_blob_client("locks/%2F/backup-a.1").acquire_lease(lease_duration=60, lease_id=str(uuid.uuid4()))
    lease = container.get_blob_client("locks/%2F/backup-c.3").acquire_lease(lease_duration=15)
    lease.break_lease(lease_break_period=0)

    signed = open_store(Destination.checked(container_name))
    assert signed.signed is not None  # the direct requests
    sdk = AzureBlobStore(container_name, lambda: container)
    direct, oracle = sorted(signed.list_leases("locks/")), sorted(sdk.list_leases("locks/"))
    assert direct == oracle
    assert [state for _, state, _ in direct] == ["leased", "broken", "available"]
    assert direct[0][2] == {"runid": "a", "host": "h", "pid": "7"}
