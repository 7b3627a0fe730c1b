"""The one place that decides whether a storage request is tried again.

Every storage request of a run (backup, verify, restore; the direct requests of every
sign-in mode and the SDK's) asks the run's `StorageBudget` before a retry:

- a transient answer (408, 429, 500, 502, 503, 504) is tried again after an exponential
  backoff with full jitter, at most `PER_REQUEST` times; then the file fails with the reason
  (storage answered, so it is about that request);
- a request that got no answer (refused, timed out, connection dropped) is tried again
  without a per-request limit: it is not the file's failure while the run's budget lasts;
- every retry spends one of the run's `retries`; each request that succeeds earns half of
  one back (up to `retries`), so steady throttling is absorbed and a retry storm is not;
- storage that gave no useful answer (success or a definite error) for `storage_timeout`
  seconds, or a spent budget, ends the run: `StorageUnavailable`, with the endpoint, what
  was tried and for how long. Socket timeouts never outlast that deadline.

Stopping (SIGTERM, Ctrl-C) sets `STOP`: no request starts or retries after it, and
requests waiting in a socket read are woken (`abort_requests`)."""

from __future__ import annotations

import functools
import gc
import random
import signal
import threading
import time
import weakref
from dataclasses import dataclass

from .errors import ConfigurationError

PER_REQUEST = 8  # retries of one request after transient answers, before its file fails
FIRST_BACKOFF = 0.5  # seconds; doubles each retry of a request
MAX_BACKOFF = 30.0
REFUND = 0.5  # retries earned back by each request that succeeds
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    """How patient a run is with storage: the run's retry budget, and how long storage may
    go without a useful answer before the run ends. Part of no checkpoint's identity."""

    retries: int = 100
    storage_timeout: float = 60.0

    @classmethod
    def checked(cls, retries: int, storage_timeout: float) -> "RetryPolicy":
        """A policy from user input; ConfigurationError names a bad value and the fix."""
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigurationError(f"retries {retries!r} is not a whole number of 0 or more: give e.g. 100")
        if not isinstance(storage_timeout, (int, float)) or not 0 < storage_timeout < float("inf"):
            raise ConfigurationError(f"storage timeout {storage_timeout!r} is not a number of seconds above 0: "
                                     f"give e.g. 60")
        return cls(retries, float(storage_timeout))

    def worst_case_seconds(self) -> float:
        """The longest a run goes on after storage's last answer before it fails: the
        deadline, then at most one connect attempt cut short by it, and the end of the run."""
        return self.storage_timeout + min(CONNECT_TIMEOUT, self.storage_timeout) + 5.0


class StorageUnavailable(Exception):
    """Storage stopped answering (or failed so many requests that the budget is spent):
    the run ends here instead of failing its files one by one."""

    def __init__(self, message: str, last_problem: str = ""):
        super().__init__(message, last_problem)  # all args, so it pickles with a task's state
        self.message, self.last_problem = message, last_problem

    def __str__(self) -> str:
        return self.message


class TokenUnavailable(StorageUnavailable):
    """No Entra ID token came within the storage timeout: the identity endpoint (managed
    identity, workload identity, Azure CLI) is silent, so no request can be signed."""


class RunStopped(Exception):
    """The run was asked to stop (SIGTERM, Ctrl-C); what is not finished is not recorded."""


STOP = threading.Event()
_stop_reason = ["stopped"]
stop_signal: list[int] = []  # the signal that stopped the process's runs, once one did
_abort_callbacks: "weakref.WeakSet" = weakref.WeakSet()


def request_stop(reason: str, signum: int | None = None) -> None:
    """Stop every run of this process: no new request, retries end, waiting reads wake."""
    _stop_reason[0] = reason
    if signum is not None and not stop_signal:
        stop_signal.append(signum)
    STOP.set()
    for target in list(_abort_callbacks):
        try:
            target.abort_all()
        except Exception:  # noqa: BLE001 - best effort while stopping
            pass


def on_stop(target) -> None:
    """Register something with an `abort_all()`, called on a stop (held weakly), such as
    connections whose waiting requests it wakes."""
    _abort_callbacks.add(target)


def forget_on_stop(target) -> None:
    _abort_callbacks.discard(target)


def stops_on_termination(fn):
    """For a flow function: Prefect turns SIGTERM (a cancelled deployment run, `kill`) into
    an exception in the flow's thread, and Ctrl-C is one too; before the engine waits for
    its task threads, stop every request, so that wait takes seconds, not a socket timeout."""

    @functools.wraps(fn)
    def flow_body(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            from prefect.exceptions import TerminationSignal  # loaded already: this wraps a flow

            if isinstance(exc, (KeyboardInterrupt, TerminationSignal)):
                number = getattr(exc, "signal", signal.SIGINT)
                request_stop(f"stopped by {signal.Signals(number).name}", number)
                # The process ends next (a worker's run exits after the engine's report):
                # the interpreter's last collections over the million objects imports
                # made took 2 s of a cancelled run's exit; frozen, they are skipped.
                gc.freeze()
            raise

    return flow_body


def stop_reason() -> str:
    """What stopped this process's runs ("stopped by SIGTERM"), once something did."""
    return _stop_reason[0]


def stopped_error() -> RunStopped:
    return RunStopped(f"{_stop_reason[0]}: not finished, not recorded")


def backoff(retry: int, limit: float) -> float:
    """Seconds before retry number `retry` (0-based) of one request: exponential, full
    jitter (so threads that failed together do not come back together), never past `limit`."""
    return max(0.0, min(limit, random.uniform(0, min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (retry + 1)))))


class StorageBudget:
    """The retry budget and deadline of one run against one endpoint (thread-safe)."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(), endpoint: str = ""):
        self.policy, self.endpoint = policy, endpoint
        self._lock = threading.Lock()
        # The deadline's start: the last useful answer, or when a request went out with
        # nothing else in flight and nothing failing (time spent reading files is not silence).
        self.last_answer = time.monotonic()
        self.in_flight = 0
        self.troubled = False  # a request failed since the last useful answer
        self.tokens = float(policy.retries)
        self.retried = 0
        self.last_problem = ""
        self.failure: StorageUnavailable | None = None

    def check(self) -> None:
        """Raise if the run must not send another request."""
        if STOP.is_set():
            raise stopped_error()
        if self.failure is not None:
            raise self.failure
        if self.troubled and time.monotonic() - self.last_answer > self.policy.storage_timeout:
            self._fail(f"no useful answer within the storage timeout of {self.policy.storage_timeout:g} s")

    def begin(self) -> None:
        """A request (attempt) goes out."""
        with self._lock:
            if self.in_flight == 0 and not self.troubled:
                self.last_answer = max(self.last_answer, time.monotonic())
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def answered(self) -> None:
        """A request succeeded or got a definite answer: storage is there."""
        with self._lock:
            self.last_answer = time.monotonic()
            self.troubled = False
            self.tokens = min(float(self.policy.retries), self.tokens + REFUND)

    def heard_from(self) -> None:
        """Storage took part of a request in (a piece of a large upload): it is there, though
        nothing was answered yet."""
        self.last_answer = max(self.last_answer, time.monotonic())

    def timeout(self) -> float:
        """The socket timeout for a request starting now: never past the deadline, so a
        silent endpoint ends the run on time (at least 1 s, so a request can be sent)."""
        remaining = self.last_answer + self.policy.storage_timeout - time.monotonic()
        return max(1.0, min(self.policy.storage_timeout, remaining))

    def connect_timeout(self) -> float:
        return min(CONNECT_TIMEOUT, self.timeout())

    def retry(self, retry: int, problem: str, answered: bool, retry_after: float | None = None) -> bool:
        """Decide retry number `retry` (0-based) of one request after `problem`, and wait
        for it: the backoff, or longer when storage asked for `retry_after` seconds (never
        past the deadline). False: give up on this request (its file fails). Raises
        StorageUnavailable when the run must end, RunStopped when it is being stopped."""
        if STOP.is_set():
            raise stopped_error()
        with self._lock:
            self.last_problem = problem
            self.troubled = True
            if self.failure is None and answered and retry >= PER_REQUEST:
                return False
        self.check()
        with self._lock:
            if self.tokens < 1:
                self._fail_locked(f"all {self.policy.retries} retries of the run spent")
            self.tokens -= 1
            self.retried += 1
            limit = self.last_answer + self.policy.storage_timeout - time.monotonic()
        wait = backoff(retry, max(0.0, limit))
        if retry_after:
            wait = max(wait, min(retry_after, max(0.0, limit)))
        if STOP.wait(wait):
            raise stopped_error()
        self.check()
        return True

    def end_run(self, failure: StorageUnavailable):
        """End the run with `failure` (unless it ended already): every request stops."""
        with self._lock:
            if self.failure is None:
                self.failure = failure
                self.last_problem = failure.last_problem or self.last_problem
            raise self.failure

    def _fail(self, why: str) -> None:
        with self._lock:
            self._fail_locked(why)

    def _fail_locked(self, why: str):
        if self.failure is None:
            now = time.monotonic()
            where = f" at {self.endpoint}" if self.endpoint else ""
            self.failure = StorageUnavailable(
                f"blob storage{where} stopped answering ({why}): its last useful answer came "
                f"{now - self.last_answer:.0f} s ago; {self.retried} requests were tried again in this run, "
                f"the last problem: {self.last_problem or 'none'}. "
                f"The run stopped there: run the same command again once storage answers "
                f"(--storage-timeout and --retries set how patient a run is)",
                self.last_problem)
        raise self.failure


class LockBudget(StorageBudget):
    """The budget of one request on a run's lock (take, renew, release): its own, so a
    renewal that failed does not end the next one, and a stopped or failed run still gives
    its lock back. It goes out after a stop too, and is never retried after one."""

    def __init__(self, endpoint: str = "", storage_timeout: float = 15.0):
        super().__init__(RetryPolicy(retries=PER_REQUEST, storage_timeout=storage_timeout), endpoint)

    def within(self, seconds: float) -> "LockBudget":
        """The same budget, never more patient than `seconds` (the run's storage timeout)."""
        return LockBudget(self.endpoint, min(self.policy.storage_timeout, seconds))

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.troubled and time.monotonic() - self.last_answer > self.policy.storage_timeout:
            self._fail(f"no useful answer within the storage timeout of {self.policy.storage_timeout:g} s")

    def retry(self, retry: int, problem: str, answered: bool, retry_after: float | None = None) -> bool:
        return False if STOP.is_set() else super().retry(retry, problem, answered, retry_after)


def fetch_token(credential, scopes, budget: StorageBudget, **kwargs):
    """credential.get_token(*scopes) waited for no longer than the storage timeout, nor
    past a stop. azure-identity's credentials take no timeout, and a managed identity
    endpoint that accepts and never answers would hold the run for good: the call runs in
    a thread of its own, which is left behind if it never returns."""
    from concurrent.futures import Future, TimeoutError as FutureTimeout

    box: Future = Future()

    def fetch():
        try:
            box.set_result(credential.get_token(*scopes, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            box.set_exception(exc)

    threading.Thread(target=fetch, name="token", daemon=True).start()
    limit = budget.policy.storage_timeout
    deadline = time.monotonic() + limit
    while True:
        budget.check()
        try:
            return box.result(timeout=max(0.0, min(0.25, deadline - time.monotonic())))
        except FutureTimeout:
            if time.monotonic() >= deadline:
                what = f"no Entra ID token from {type(credential).__name__} within the storage timeout of {limit:g} s"
                budget.end_run(TokenUnavailable(
                    f"{what} (its identity endpoint did not answer): the run stopped there; check the identity "
                    f"(managed identity, workload identity, `az login`) and run again, or raise --storage-timeout",
                    what))


def retry_after_seconds(headers) -> float | None:
    """How long storage asked a client to wait before trying again (Retry-After in
    seconds or as an HTTP date, or Azure's retry-after-ms / x-ms-retry-after-ms), or None."""
    from email.utils import parsedate_to_datetime

    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = (headers.get(name) or "").strip()
        if not value:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return None
