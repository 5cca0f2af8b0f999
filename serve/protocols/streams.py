"""Camera streams: latest frame wins.

A camera sends frames at its own rate; when the model is slower, queueing every frame would
answer seconds-old video. So a stream keeps at most `max_pending` frames waiting (default 1):
a newer frame pushes out the oldest waiting one, which is dropped unanswered and counted. One
frame per stream is in the pipeline at a time, so results come back in the order sent. Plain
asyncio, no Ray, no gRPC (tests/test_streams.py); serve/protocols/oip_grpc.py feeds it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamStats:
    received: int = 0
    dropped: int = 0  # pushed out by newer frames, or refused by admission
    answered: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    _answer_times: deque = field(default_factory=lambda: deque(maxlen=32))

    def answered_one(self) -> None:
        self.answered += 1
        self._answer_times.append(time.monotonic())

    def fps(self) -> float:
        """Answers per second over the last (up to) 32 answers."""
        times = self._answer_times
        if len(times) < 2:
            return 0.0
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else 0.0

    def parameters(self, latency_ms: float) -> dict:
        return {"stream_fps": round(self.fps(), 2), "frames_received": self.received,
                "frames_dropped": self.dropped, "frames_answered": self.answered, "frame_latency_ms": latency_ms}


class LatestFrames:
    """Frames waiting for the pipeline: `put` never blocks; past `max_pending` the oldest goes."""

    def __init__(self, max_pending: int, stats: StreamStats):
        self.stats = stats
        self._frames: deque[tuple[Any, float]] = deque()
        self._max_pending = max_pending
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, frame: Any) -> None:
        self.stats.received += 1
        self._frames.append((frame, time.perf_counter()))
        while len(self._frames) > self._max_pending:
            self._frames.popleft()
            self.stats.dropped += 1
        self._ready.set()

    def close(self) -> None:
        """No more frames will come: `get` answers None once the waiting ones are taken."""
        self._closed = True
        self._ready.set()

    async def get(self) -> tuple[Any, float] | None:
        """(frame, when it arrived: perf_counter) or None at the end of the stream."""
        while not self._frames:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()
