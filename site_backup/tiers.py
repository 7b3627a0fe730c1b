"""Access tiers: the tier uploads are written in (--access-tier), and blobs a lifecycle
rule moved to Archive, which cannot be read until they are rehydrated (Azure answers 409
BlobArchived), so nothing reads them by accident."""

from __future__ import annotations

from .errors import ConfigurationError

UPLOAD_TIERS = ("Hot", "Cool", "Cold")
ARCHIVE = "Archive"
# Azure's documented rehydration times (Blob rehydration from the Archive tier).
REHYDRATE_HOURS = {"Standard": 15, "High": 1}


def check_access_tier(value: str | None) -> str | None:
    """The tier uploads set, spelled as Azure does (Hot, Cool, Cold), or None for the
    account's default. Archive is refused: see the message."""
    if value is None or value == "":
        return None
    for tier in UPLOAD_TIERS:
        if value.strip().lower() == tier.lower():
            return tier
    if value.strip().lower() == ARCHIVE.lower():
        raise ConfigurationError(
            "--access-tier Archive is refused for uploads: an archived blob cannot be read until it is rehydrated "
            "(up to 15 hours), so a restore would wait hours, and every file changed within 180 days would be "
            "billed for early deletion; back up as Cold and let a lifecycle rule move older blobs to Archive")
    raise ConfigurationError(f"--access-tier {value!r} is not a tier uploads can use: give Hot, Cool or Cold "
                             f"(or leave it out for the account's default)")


def check_rehydrate(value: str | None) -> str | None:
    """The rehydrate priority (Standard or High), or None for no rehydration."""
    if value is None or value == "":
        return None
    for priority in REHYDRATE_HOURS:
        if value.strip().lower() == priority.lower():
            return priority
    raise ConfigurationError(f"--rehydrate {value!r} is not a priority: give Standard (up to 15 hours) or High "
                             f"(up to 1 hour, at a higher price)")


def is_archived(tier: str | None) -> bool:
    return (tier or "").lower() == ARCHIVE.lower()


def archived_reason(rehydrating: str = "", kept: bool = False) -> str:
    """Why an archived file was not restored, and the fix. `kept`: the content is an
    archived snapshot or version, which Azure cannot rehydrate in place."""
    if kept:
        return ("archived (Archive tier): not restored; its content is an archived snapshot or version, which Azure "
                "does not rehydrate in place: copy it to a new blob in the Hot or Cool tier (Copy Blob with "
                "x-ms-rehydrate-priority; Azure takes up to 15 hours at Standard priority, 1 hour at High)")
    if rehydrating:
        hours = REHYDRATE_HOURS.get(rehydrating, 15)
        return (f"archived (Archive tier): not restored; rehydration to Hot was requested ({rehydrating} priority: "
                f"Azure takes up to {hours} hour{'s' if hours != 1 else ''}): run the restore again after it")
    return ("archived (Archive tier): not restored, its content cannot be read until it is rehydrated: "
            "run the restore again with --rehydrate (Azure takes up to 15 hours at Standard priority, "
            "1 hour at High), or rehydrate it yourself with Set Blob Tier "
            "(az storage blob set-tier --tier Hot --rehydrate-priority Standard)")


def rehydrator(store, history_store, prefix: str, priority: str):
    """For restore: `rehydrate(entry)` asks Azure to rehydrate an archived blob to Hot (Set
    Blob Tier with `priority`) and returns the file's reason, never raises. A snapshot or
    version cannot be rehydrated in place: its reason says how to copy it instead."""
    from .errors import describe, error_code

    def rehydrate(entry) -> str:
        kind, _, value = (entry.where or "").partition(":")
        if kind in ("snapshot", "version") or kind == "attic" and value:
            return archived_reason(kept=True)
        try:
            if kind == "attic":
                from .names import attic_folder

                history_store.set_tier(attic_folder(prefix) + entry.name, "Hot", priority)
            else:
                store.set_tier(entry.name, "Hot", priority)
        except Exception as exc:
            if error_code(exc) != "BlobBeingRehydrated":  # asked for already: under way
                return f"{archived_reason()} (--rehydrate was refused: {describe(exc)})"
        return archived_reason(priority)

    return rehydrate
