"""Prefect automations that alert on failed and missed backups, made from the files in
automations/ (run by scripts/deploy): created on the first deploy, updated on the next.

    ALERT_BLOCK         the notification block their action sends through (default backup-alerts)
    ALERT_WEBHOOK_URL   if set, saves ALERT_BLOCK as a Custom Webhook block posting to this URL
    ALERT_MISSED_AFTER  how long without a completed backup before the "missed" alert (default 26h)
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import timedelta
from pathlib import Path

from .errors import ConfigurationError

AUTOMATIONS = Path(__file__).resolve().parent.parent / "automations"
DEFAULT_BLOCK = "backup-alerts"
DEFAULT_MISSED_AFTER = "26h"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> timedelta:
    """A window such as 26h, 90m, 2d or 30s (seconds when no unit); Prefect's proactive
    triggers take 10 s or more."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0
    if seconds < 10:
        raise ConfigurationError(f"ALERT_MISSED_AFTER {text!r} is not a window of 10 s or more: give e.g. 26h, "
                                 f"90m or 30s")
    return timedelta(seconds=seconds)


def describe_window(window: timedelta) -> str:
    seconds = window.total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def load_automations(block_id: str, missed_after: timedelta, folder: Path = AUTOMATIONS) -> list:
    """The automations of `folder` (*.yaml), their action sending through the block
    `block_id`, the missed-backup window `missed_after`."""
    import yaml
    from prefect.automations import AutomationCore

    values = {"alert_block": block_id, "missed_after": f"PT{missed_after.total_seconds():g}S",  # ISO 8601
              "missed_after_text": describe_window(missed_after)}
    found = []
    for path in sorted(folder.glob("*.yaml")):
        text = re.sub(r"\{\{ (alert_block|missed_after|missed_after_text) \}\}", lambda m: values[m.group(1)],
                      path.read_text())
        found.append(AutomationCore.model_validate(yaml.safe_load(text)))
    return found


async def notification_block_id(client, name: str, webhook_url: str | None) -> str:
    """The id of the notification block `name`: saved first as a Custom Webhook block
    posting to `webhook_url` when that is given."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if webhook_url:
        block = CustomWebhookNotificationBlock(name=name, url=webhook_url,
                                               json_data={"subject": "{{subject}}", "body": "{{body}}"})
        return str(await block.asave(name, overwrite=True, client=client))
    found = [d for d in await client.read_block_documents(include_secrets=False)
             if d.name == name and "notify" in (d.block_schema.capabilities if d.block_schema else [])]
    if len(found) != 1:
        what = "no notification block" if not found else f"{len(found)} notification blocks"
        raise ConfigurationError(
            f"{what} named {name!r}: create one in the Prefect UI (Blocks: Slack Webhook, Custom Webhook, ...) or "
            f"set ALERT_WEBHOOK_URL to save a Custom Webhook block of that name, or name another with ALERT_BLOCK; "
            f"then run make deploy again")
    return str(found[0].id)


async def apply_automations(client, automations) -> list[tuple[str, str]]:
    """Create each automation, or update the one of the same name (a redeploy makes no
    duplicate); returns (name, "created" or "updated")."""
    done = []
    for automation in automations:
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:  # duplicates someone made by hand: one of each name stays
                await client.delete_automation(extra.id)
            done.append((automation.name, "updated"))
        else:
            await client.create_automation(automation)
            done.append((automation.name, "created"))
    return done


async def deploy_alerts(block: str, webhook_url: str | None, missed_after: timedelta) -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        block_id = await notification_block_id(client, block, webhook_url)
        return await apply_automations(client, load_automations(block_id, missed_after))


def main() -> int:
    """scripts/deploy's step: the alerts, or one line saying why there are none (exit 0:
    the deployments stand without them)."""
    block = os.environ.get("ALERT_BLOCK") or DEFAULT_BLOCK
    try:
        missed_after = parse_window(os.environ.get("ALERT_MISSED_AFTER") or DEFAULT_MISSED_AFTER)
        done = asyncio.run(deploy_alerts(block, os.environ.get("ALERT_WEBHOOK_URL"), missed_after))
    except ConfigurationError as exc:
        print(f"alerts not set up: {exc}", file=sys.stderr)
        return 0
    for name, how in done:
        print(f"automation {name!r} {how}: notifies through block {block!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
