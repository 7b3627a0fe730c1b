"""Sizes for people (site_backup/units.py), as the summaries, artifacts and progress show them."""

from __future__ import annotations

import pytest

from site_backup.units import MiB, human_bytes


@pytest.mark.parametrize("size,shown", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (10 * MiB + MiB // 2, "10.5 MiB"),
    (3 * 2**30, "3.0 GiB"), (2**50, "1024.0 TiB"),
])
def test_human_bytes(size, shown):
    assert human_bytes(size) == shown
