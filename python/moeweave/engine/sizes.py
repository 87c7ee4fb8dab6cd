"""Byte sizes as users write them: "1GiB", "512MiB", "1.5G", "800M", "4096"."""

import re

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes in `text` (decimal k/M/G/T or binary KiB/MiB/GiB/TiB; a plain number is bytes)."""
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ValueError(f"not a byte size: {text!r} (examples: 512MiB, 1.5GiB, 800M, 4096)")
        size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size <= 0:
        raise ValueError(f"a byte size must be positive, got {text!r}")
    return size


def format_size(size: float) -> str:
    """`size` bytes in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if abs(size) < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
