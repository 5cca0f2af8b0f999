"""The last minute of one ingress replica's predict requests, per model: what the try-it page's
live panel shows (requests/s, p50/p99, errors). Prometheus has the long view (docs/metrics.md);
this needs none. Pure: tests/test_recent_stats.py."""

from __future__ import annotations

import time
from collections import defaultdict, deque

WINDOW_S = 60.0


class RecentStats:
    def __init__(self, window_s: float = WINDOW_S, clock=time.monotonic):
        self.window_s, self._clock = window_s, clock
        self._by_model: dict[str, deque] = defaultdict(deque)

    def record(self, model: str, status: int, total_ms: float) -> None:
        self._by_model[model].append((self._clock(), status, total_ms))

    def summary(self) -> dict[str, dict]:
        now = self._clock()
        out = {}
        for model, entries in list(self._by_model.items()):
            while entries and entries[0][0] < now - self.window_s:
                entries.popleft()
            if not entries:
                del self._by_model[model]
                continue
            span = min(self.window_s, max(now - entries[0][0], 1.0))
            ok = sorted(ms for _, status, ms in entries if status == 200)
            out[model] = {
                "requests": len(entries),
                "requests_per_s": round(len(entries) / span, 2),
                "errors": sum(1 for _, status, _ in entries if status != 200),
                "p50_ms": round(_quantile(ok, 0.50), 2) if ok else None,
                "p99_ms": round(_quantile(ok, 0.99), 2) if ok else None,
            }
        return out


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
