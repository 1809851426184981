"""Numbers the service reads from environment variables, refused with a message naming the variable
when they are not what is expected (a misconfiguration stops start-up; nothing is clipped)."""

from __future__ import annotations

import math
import os


def positive_number(name: str, default: float) -> float:
    """``$name`` as a positive, finite number (``default`` when unset or blank); raises ValueError."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"${name}={text[:40]!r}: expected a positive number") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"${name}={text[:40]!r}: expected a positive, finite number")
    return value


def positive_whole_number(name: str, default: int) -> int:
    """``$name`` as a whole number ≥ 1 (``default`` when unset or blank); raises ValueError."""
    value = positive_number(name, default)
    if not float(value).is_integer():
        raise ValueError(f"${name}={value:g}: expected a whole number")
    return int(value)
