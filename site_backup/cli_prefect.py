"""Which Prefect server a run from the command line uses, and the settings it runs with."""

from __future__ import annotations

import os
import urllib.request


LOCAL_PREFECT_API = "http://127.0.0.1:4200/api"  # where `make server` puts it


def prefect_settings_for_this_run() -> tuple[dict, str]:
    """Use the configured Prefect server; else one running at the local default address
    (`make server`); else Prefect's temporary server, with a start-up timeout long
    enough for its first start (setting up its database can take longer than the 20 s default)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
    )

    settings = get_current_settings()
    quick = _quick_exit_settings()
    if settings.api.url:
        return quick, ""
    if _answers(LOCAL_PREFECT_API + "/health"):
        return {**quick, PREFECT_API_URL: LOCAL_PREFECT_API}, ""
    notice = (
        "No Prefect server configured or running at 127.0.0.1:4200: starting a temporary one for this run "
        "(10-40 s). `make server` starts one that lets a run start uploading in about 1 s."
    )
    timeout = max(settings.server.ephemeral.startup_timeout_seconds, 180)
    # Analytics off: offline, the temporary server would log a telemetry error every run.
    return {**quick, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout,
            PREFECT_SERVER_ANALYTICS_ENABLED: False}, notice


def _quick_exit_settings() -> dict:
    """No flow-run heartbeats for a run started here, unless the environment asks for them.
    Prefect's heartbeat thread sleeps in 1 s steps and the run waits for it to notice the
    end, which adds up to 1 s to every run; a run from a terminal has a person
    watching it, and deployments (run by a worker, not by this function) keep heartbeats."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    if {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"} & set(os.environ):
        return {}
    return {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
