"""How the project writes a byte count for people: binary units, one decimal above bytes."""

from __future__ import annotations


def human_bytes(n: int | None) -> str:
    """`512 B`, `4.9 KB`, `93.8 MB`, `1.2 GB` (KB = 1024 bytes); None reads as 0."""
    size = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
