"""Error kinds and the short, secret-free reasons shown to people."""

from __future__ import annotations

import re

# Statuses Azure Storage documents as worth retrying (throttling, timeouts, server trouble).
TRANSIENT_STATUSES = {408, 429, 500, 502, 503, 504}


class ConfigurationError(Exception):
    """Bad input or configuration, found before anything is uploaded (exit code 2).

    The message names the problem and the fix."""


class FileChangedError(Exception):
    """The file changed while it was being read, so what was read is not a consistent copy."""


_SECRETS = [
    (re.compile(r"(AccountKey=)[^;\s]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(SharedAccessSignature=)[^;\s]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"([?&]sig=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(client_secret['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.IGNORECASE), r"\1***"),
]


def redact(text: str) -> str:
    """Remove account keys, SAS signatures and client secrets from a message."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def error_code(exc: BaseException) -> str | None:
    """The storage service's error code (the SDK gives an enum or a str), if any."""
    code = getattr(exc, "error_code", None)
    return getattr(code, "value", code)


def is_transient(exc: BaseException) -> bool:
    """True when trying the same request again later may succeed."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ClientAuthenticationError):
        return False
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return True
    if isinstance(exc, HttpResponseError):
        # InvalidBlockList: a concurrent upload of the same blob won the commit.
        return status_of(exc) in TRANSIENT_STATUSES or error_code(exc) == "InvalidBlockList"
    if isinstance(exc, FileChangedError):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError))


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed file: the service's error code or the OS error, no secrets."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, HttpResponseError):
        code = error_code(exc) or exc.reason or "error"
        status = status_of(exc)
        hint = _HINTS.get(str(code), "")
        return redact(f"storage answered {status} {code}{hint}")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        # The SDK wraps urllib3's long chain; the OS reason at its end is what helps.
        found = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
        reason = found[-1].strip() if found else str(exc).splitlines()[0][:160]
        return redact(f"{'no answer' if isinstance(exc, ServiceRequestError) else 'connection broken'}: {reason}")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return redact(f"{type(exc).__name__}: {first_line}"[:300])


_HINTS = {
    "InvalidResourceName": ": the service rejects this blob name; rename the file",
    "InvalidUri": ": the service rejects this blob name; rename the file",
    "OutOfRangeInput": ": the service rejects this blob name (too long or too deep?); shorten the path",
    "ContainerNotFound": ": the container was deleted during the run; run again to re-create it",
    "AuthenticationFailed": ": the credentials were rejected; check the account key or token",
    "AuthorizationPermissionMismatch": ": the identity may not write blobs; grant it 'Storage Blob Data Contributor'",
}
