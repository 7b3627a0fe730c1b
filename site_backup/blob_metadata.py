"""A file's time and folder markers in blob metadata: the RFC 3339 codec rclone uses for
`mtime`, AzCopy's `modtime` in nanoseconds, and the `hdi_isfolder` marker."""

from __future__ import annotations

import re

MTIME_KEY = "mtime"  # the metadata key rclone uses too, in the same RFC 3339 format
AZCOPY_MTIME_KEY = "modtime"  # AzCopy's --preserve-posix-properties: decimal nanoseconds since 1970
FOLDER_KEY = "hdi_isfolder"  # AzCopy's (and Data Lake's) marker of a blob that stands for a folder


def format_mtime(mtime_ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds, trailing zeros trimmed, e.g. 2023-11-14T22:13:20.1Z.
    Any integer works: integer arithmetic on the proleptic Gregorian calendar, no datetime
    range. Years outside 0-9999 are written as Go's time.Format writes them (rclone's code):
    `11476-...`, `0000-...`, `-0249-...`."""
    seconds, nanos = divmod(mtime_ns, 10**9)
    days, second_of_day = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    sign = "-" if year < 0 else ""
    fraction = f"{nanos:09d}".rstrip("0")
    return (f"{sign}{abs(year):04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
            f"{'.' + fraction if fraction else ''}Z")


_RFC3339 = re.compile(
    r"(-?\d{4,})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII
)


def parse_mtime(text: str | None) -> int | None:
    """Nanoseconds since 1970 from an RFC 3339 time as format_mtime or rclone writes it (any
    year, any offset, up to 9 fraction digits kept); None for anything else (the blob then
    compares by MD5)."""
    found = _RFC3339.fullmatch(text) if isinstance(text, str) and len(text) < 64 else None
    if not found:
        return None
    year, month, day, hour, minute, second = (int(g) for g in found.group(1, 2, 3, 4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            and hour < 24 and minute < 60 and second < 60):
        return None
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    if found.group(8):
        offset = int(found.group(9)) * 3600 + int(found.group(10)) * 60
        seconds -= offset if found.group(8) == "+" else -offset
    nanos = int((found.group(7) or "").ljust(9, "0")[:9])
    return seconds * 10**9 + nanos


# Howard Hinnant's days <-> civil date algorithms (proleptic Gregorian, day 0 = 1970-01-01),
# exact for every integer with Python's floor division.
def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    day_of_era = days - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def stored_mtime(metadata: dict[str, str] | None) -> int | None:
    """The file's modification time from a blob's metadata: `mtime` (RFC 3339, ours and
    rclone's), else AzCopy's `modtime` (integer nanoseconds); None when neither parses.
    Metadata names are case-insensitive in Azure, so they are matched that way."""
    meta = {k.lower(): v for k, v in (metadata or {}).items()}
    found = parse_mtime(meta.get(MTIME_KEY))
    if found is None:
        modtime = meta.get(AZCOPY_MTIME_KEY, "").strip()
        if modtime.lstrip("-").isdigit():
            return int(modtime)
        found = parse_mtime(modtime)
    return found


def is_folder_marker(metadata: dict[str, str] | None) -> bool:
    """A blob that stands for a folder (AzCopy writes one per folder with
    --preserve-posix-properties, Data Lake accounts for every directory)."""
    meta = {k.lower(): v for k, v in (metadata or {}).items()}
    return meta.get(FOLDER_KEY, "").strip().lower() == "true"
