"""Small text helpers shared by every layer."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # Errors raised in another replica arrive wrapped with a traceback; keep the cause.
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]
