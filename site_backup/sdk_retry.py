"""The Azure SDK's retry policy for a run: the SDK path (behind a proxy, downloads,
listings) retries as the run's StorageBudget decides, like the direct requests."""

from __future__ import annotations

from .errors import TRANSIENT_STATUSES, describe
from .retry import StorageBudget, retry_after_seconds


# Beyond the statuses above, what Azure's own storage policy retries: a copy whose source
# answered busy or failed, and a transactional MD5 that did not survive the trip.
_COPY_SOURCE_RETRY = {"OperationTimedOut", "InternalError", "ServerBusy"}


def _retryable(response) -> bool:
    """Whether an SDK pipeline response is worth trying again."""
    status = response.http_response.status_code
    headers = response.http_response.headers
    if status in TRANSIENT_STATUSES or (status >= 500 and status not in (501, 505)):
        return True
    if status >= 400:
        return headers.get("x-ms-copy-source-error-code") in _COPY_SOURCE_RETRY
    sent = response.http_request.headers.get("content-md5")
    # Only requests that sent a transactional MD5 (uploads with validate_content) are
    # compared: no download on the SDK path asks for one.
    return bool(response.context.get("validate_content") and sent
                and headers.get("content-md5") not in (None, sent))


def sdk_retry_policy(budget: StorageBudget):
    """The Azure SDK's retry policy, deciding by `budget` (the SDK path: behind a proxy,
    downloads, listings), with the same timeouts as the direct requests. Built on the
    public ExponentialRetry and azure-core's pipeline contract only."""
    from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
    from azure.storage.blob import ExponentialRetry


    class BudgetRetry(ExponentialRetry):
        def send(self, request):
            # The SDK's loop, except that the budget decides (and waits), and every transient
            # status is retried: the SDK's own rule never retries 429 TooManyRequests.
            settings = self.configure_retries(request)  # takes our per-request retry_hook out of the options
            settings["options"] = request.context.options  # what the transport reads per attempt
            _set_timeouts(settings)
            while True:
                budget.check()
                budget.begin()
                try:
                    response, error = self.next.send(request), None
                except AzureError as exc:
                    # A shared-key signing error cannot happen here: the key was decoded when
                    # the credentials were checked.
                    response, error = None, exc
                finally:
                    budget.end()
                if error is not None:
                    if not self.increment(settings, request.http_request, error=error):
                        raise error
                    _hook(settings, request.http_request, None, error)
                    continue
                status = response.http_response.status_code
                if status not in TRANSIENT_STATUSES:
                    budget.answered()
                if _retryable(response) and self.increment(settings, request.http_request,
                                                           response=response.http_response):
                    _hook(settings, request.http_request, response.http_response, None)
                    continue
                response.http_response.location_mode = settings["mode"]
                return response

        def increment(self, settings, request, response=None, error=None) -> bool:
            answered = not isinstance(error, (ServiceRequestError, ServiceResponseError))
            problem = (f"{response.status_code} {response.headers.get('x-ms-error-code') or response.reason}"
                       if response is not None else describe(error) if error is not None else "retry")
            retry_after = retry_after_seconds(response.headers) if response is not None else None
            if not budget.retry(settings["count"], problem, answered, retry_after):
                return False
            if request.body is not None and hasattr(request.body, "read"):
                if settings["body_position"] is None:
                    return False
                request.body.seek(settings["body_position"])
            settings["count"] += 1
            _set_timeouts(settings)  # the next attempt's, never past the deadline
            return True

        def sleep(self, settings, transport):
            pass  # budget.retry waited already (and wakes on stop)

    def _hook(settings, request, response, error) -> None:
        # The SDK's contract for the `retry_hook` keyword of each call (RetryLog here).
        if settings["hook"]:
            settings["hook"](retry_count=settings["count"] - 1, location_mode=settings["mode"], request=request,
                             response=response, error=error)

    def _set_timeouts(settings) -> None:
        settings["options"]["connection_timeout"] = budget.connect_timeout()
        settings["options"]["read_timeout"] = budget.timeout()

    return BudgetRetry(retry_total=10**6)
