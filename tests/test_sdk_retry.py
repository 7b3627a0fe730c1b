"""The SDK path's retry decision (site_backup.sdk_retry._retryable) against the SDK's own rule
as the oracle: the same answer for every status and header, except 429, which ours retries."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from azure.storage.blob._shared.models import LocationMode  # the oracle's own types: tests only
from azure.storage.blob._shared.policies import is_checksum_retry, is_retry

from site_backup.sdk_retry import _retryable


class _Headers(dict):
    def get(self, name, default=None):
        return super().get(name.lower(), default)

    def __getitem__(self, name):
        return super().__getitem__(name.lower())


def _response(status: int, headers: dict | None = None, sent_md5: str | None = None, validate: bool = False):
    request = SimpleNamespace(headers=_Headers({"content-md5": sent_md5} if sent_md5 else {}))
    http_response = SimpleNamespace(status_code=status, headers=_Headers({k.lower(): v for k, v in (headers or {}).items()}),
                                    body=lambda: b"")
    return SimpleNamespace(http_response=http_response, http_request=request,
                           context={"validate_content": validate} if validate else {})


CASES = [
    *[(status, {}) for status in (200, 201, 202, 206, 304, 400, 403, 404, 408, 409, 412, 416, 429, 500, 501, 502,
                                  503, 504, 505, 507)],
    *[(409, {"x-ms-copy-source-error-code": code}) for code in ("ServerBusy", "InternalError", "OperationTimedOut",
                                                                  "CannotVerifyCopySource")],
]


@pytest.mark.parametrize(("status", "headers"), CASES)
def test_the_retry_rule_matches_the_sdk_except_for_429(status, headers):
    response = _response(status, headers)
    sdk = is_retry(response, LocationMode.PRIMARY) or is_checksum_retry(response)
    assert _retryable(response) == (sdk or status == 429)


@pytest.mark.parametrize(("answered", "expected"), [("AAAA", False), ("BBBB", True), (None, False)])
def test_a_transactional_md5_that_came_back_different_is_retried_as_the_sdk_does(answered, expected):
    response = _response(201, {"content-md5": answered} if answered else {}, sent_md5="AAAA", validate=True)
    assert _retryable(response) is expected
    assert is_checksum_retry(response) is expected
