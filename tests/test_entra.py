"""Entra ID sign-in for real: Azurite over HTTPS with `--oauth basic` checks every bearer
token; the flows get theirs from DefaultAzureCredential (AZURE_STORAGE_ACCOUNT_URL), as a
managed identity or workload identity would give them."""

from __future__ import annotations

import os

from flows.backup_site_content import backup_site_content
from flows.verify_backup import verify_backup
from flows.restore_site_content import restore_site_content
from tests.azurite_auth import unsigned_storage_token
from tests.conftest import TestTokenCredential, read_tree

SITE = {"index.html": b"<html>home</html>", "img/logo.png": os.urandom(30_000), "big/archive.bin": os.urandom(3 * 2**20),
        "blog/caf\u00e9 & cr\u00e8me.html": b"<p>post</p>"}


def test_backup_rerun_verify_and_restore_with_an_entra_id_token(entra_storage, checkpoints, container_name, make_tree,
                                                                 tmp_path):
    from site_backup.accounts import storage_account
    from site_backup.destination import Destination
    from site_backup.fastblob import Bearer

    root = make_tree(SITE)
    issued = TestTokenCredential.tokens_issued
    first = backup_site_content(str(root), container=container_name, single_put_mib=1, block_size_mib=1)
    assert (first.outcome, first.files_uploaded, first.files_failed) == ("completed", len(SITE), 0)
    assert first.destination.startswith(entra_storage)
    assert isinstance(storage_account(Destination(container_name)).signed.auth, Bearer)  # the direct path
    assert TestTokenCredential.tokens_issued - issued <= 3  # cached, not one per request
    again = backup_site_content(str(root), container=container_name, refresh=True)
    assert (again.files_uploaded, again.files_unchanged) == (0, len(SITE))
    assert verify_backup(str(root), container=container_name).outcome == "verified"
    restored = restore_site_content(container_name, str(tmp_path / "restored"))
    assert restored.outcome == "completed" and read_tree(tmp_path / "restored") == SITE


def test_a_rejected_token_is_a_configuration_error(entra_storage, checkpoints, make_tree, monkeypatch):
    import azure.identity
    import pytest
    from azure.core.credentials import AccessToken

    from site_backup.accounts import _account
    from site_backup.errors import ConfigurationError

    class Expired(TestTokenCredential):
        def get_token(self, *scopes, **kwargs):
            token, _ = unsigned_storage_token(lifetime=-600)
            return AccessToken(token, 0)

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", Expired)
    _account.cache_clear()
    with pytest.raises(ConfigurationError, match="rejected the credentials|refused access"):
        backup_site_content(str(make_tree(SITE)), container="backups")
