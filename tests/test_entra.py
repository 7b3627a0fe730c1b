"""Entra ID sign-in for real: Azurite over HTTPS with `--oauth basic` checks every bearer
token; the flows get theirs from DefaultAzureCredential (AZURE_STORAGE_ACCOUNT_URL), as a
managed identity or workload identity would give them."""

from __future__ import annotations

import os
import threading
import time

import pytest
from azure.core.credentials import AccessToken

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


class HangsAfter(TestTokenCredential):
    """A credential whose identity endpoint answers `answers` times, then never again
    (each token is within the five-minute refresh margin, so every request asks again)."""

    answers = 0
    release = None

    def get_token(self, *scopes, **kwargs):
        cls = type(self)
        if cls.answers <= 0:
            cls.release.wait()
            raise RuntimeError("released by the test")
        cls.answers -= 1
        token, _ = unsigned_storage_token(lifetime=200)
        return AccessToken(token, int(time.time()) + 200)


def run_with_limit(fn, limit):
    """fn() in a thread: (its result or exception, seconds taken); None, limit when it
    did not end within `limit` seconds."""
    out = []

    def body():
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(limit)
    return (out[0] if out else None), time.monotonic() - started


@pytest.mark.parametrize("answers,run", [(0, "backup"), (6, "backup"), (2, "verify")])
def test_a_token_endpoint_that_stops_answering_ends_the_run_within_the_deadline(entra_storage, checkpoints, make_tree,
                                                                                 monkeypatch, container_name, answers,
                                                                                 run):
    # Before: credential.get_token has no timeout: a managed identity endpoint that accepts
    # and never answers held the run for good, before its first request (0), part-way
    # through the direct requests (6), or in the SDK's listing of a verify (2).
    import azure.identity

    from site_backup.accounts import _account
    from site_backup.errors import ConfigurationError
    from site_backup.summary import RunFailed

    root = make_tree(SITE)
    if run == "verify":
        backup_site_content(str(root), container=container_name)
    HangsAfter.answers, HangsAfter.release = answers, threading.Event()
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", HangsAfter)
    _account.cache_clear()
    flow = {"backup": backup_site_content, "verify": verify_backup}[run]
    try:
        ended, took = run_with_limit(lambda: flow(str(root), container=container_name, storage_timeout=2), 30)
    finally:
        HangsAfter.release.set()
    assert ended is not None, "the run did not end"
    assert took < 2 + 6, took
    if answers == 0:
        assert isinstance(ended, ConfigurationError), ended
        message = str(ended)
    else:
        assert isinstance(ended, RunFailed), ended
        message = ended.summary.error
    assert "no Entra ID token" in message and "within the storage timeout of 2 s" in message, message
