"""The alert automations as files (site_backup/alerts.py, automations/): what they become
before they are sent. End to end against a real server and a webhook receiver:
tests/test_deployment.py::test_make_deploy_creates_alerts_that_notify_on_a_failed_and_on_a_missed_backup."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from site_backup.alerts import load_automations, parse_window
from site_backup.errors import ConfigurationError


@pytest.mark.parametrize("text,seconds", [("26h", 93600), ("90m", 5400), ("2d", 172800), ("30s", 30), ("45", 45),
                                          ("1.5h", 5400)])
def test_the_missed_window_reads_hours_minutes_days_and_seconds(text, seconds):
    assert parse_window(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["5s", "", "a day", "-3h", "26 hours"])
def test_a_window_prefect_cannot_take_is_refused_with_the_fix(text):
    with pytest.raises(ConfigurationError, match="ALERT_MISSED_AFTER .* is not a window of 10 s or more: give e.g. 26h"):
        parse_window(text)


def test_the_files_become_a_reactive_and_a_proactive_automation_sending_through_the_block():
    block = str(uuid.uuid4())
    failed, missed = load_automations(block, timedelta(hours=26))
    assert failed.name == "backup-site-content failed" and failed.trigger.posture.value == "Reactive"
    assert failed.trigger.expect == {f"prefect.flow-run.{s}" for s in ("Failed", "Crashed", "TimedOut", "Incomplete")}
    assert missed.name == "backup-site-content missed" and missed.trigger.posture.value == "Proactive"
    assert missed.trigger.expect == {"prefect.flow-run.Completed"} and missed.trigger.within == timedelta(hours=26)
    for automation in (failed, missed):
        assert automation.trigger.match_related.model_dump() == {"prefect.resource.role": "flow",
                                                    "prefect.resource.name": "backup-site-content"}
        [action] = automation.actions
        assert action.type == "send-notification" and str(action.block_document_id) == block
    assert "{{ flow_run.name }}" in failed.actions[0].subject  # left for Prefect to fill in
    assert missed.actions[0].subject == "No backup completed in 26 hours"
