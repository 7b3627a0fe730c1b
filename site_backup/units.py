"""Sizes: the unit the options and batches are counted in, and how a size reads for people."""

from __future__ import annotations

MiB = 2**20


def count(n: int, noun: str) -> str:
    """`n` and the noun, plural unless n is 1: "1 file", "2 files", "3 batches"."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith(("ch", "sh", "s", "x")) else f"{n} {noun}s"


def human_bytes(n: float) -> str:
    """`n` bytes in binary units, for people: "512 B", "1.5 KiB", "3.2 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
