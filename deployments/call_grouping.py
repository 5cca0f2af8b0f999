"""Concurrent requests for one model leave the ingress as one downstream call.

Each Ray Serve hop costs CPU on both sides (routing, serialisation, an actor call, metrics)
whatever the payload; on a 2-core machine that per-call cost was larger than decode +
letterbox + NMS together. So the ingress does not call inference and postprocess once per
request: while a call for a model is in flight, the requests that arrive for it wait here,
and go together in the next call. A lone request goes at once (no wait timer, so
concurrency 1 pays nothing); under load, groups fill to about the concurrency, and the
per-call cost is shared by the group. No Ray import: unit-tested with plain asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

SendGroup = Callable[[str, list], Awaitable[list]]

# Weight of the newest call in the running estimate of seconds per item.
_EWMA_WEIGHT = 0.2
# Largest factor one call's measurement may exceed the running estimate by.
_MAX_STEP = 3.0


class Overloaded(Exception):
    """The item would not be answered within its budget; nothing was queued.

    `retry_after_s`: when the work queued now will have drained, at the measured rate.
    """

    def __init__(self, predicted_s: float, budget_s: float, retry_after_s: float):
        super().__init__(f"predicted {predicted_s:.2f}s to answer, over the {budget_s:.2f}s budget")
        self.predicted_s, self.budget_s, self.retry_after_s = predicted_s, budget_s, retry_after_s


@dataclass
class _Pending:
    waiting: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    in_flight: int = 0
    items_in_flight: int = 0
    # Items admitted but not yet submitted (their bodies are being read and decoded).
    reserved: int = 0

    def idle(self) -> bool:
        return not (self.waiting or self.in_flight or self.reserved)


class Reservation:
    """An admitted item's place in the queue until it is submitted (or given up).

    Counted as ahead of later arrivals, so a burst cannot all pass admission before any of it is
    queued, then pay for reading and decoding only to be refused. `release()` is idempotent.
    """

    def __init__(self, grouper: CallGrouper, key: str, pending: _Pending):
        self._grouper, self._key, self._pending = grouper, key, pending
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._pending.reserved -= 1
            self._grouper._forget_if_idle(self._key, self._pending)


class CallGrouper:
    """`await grouper.submit(key, item)` -> the result of `send(key, [.., item, ..])` for that item.

    `send` takes a key and a list of items and returns one result per item, in order; at
    most `max_in_flight` sends per key run at a time, each with at most `max_group` items.
    Two in flight keep a downstream with two run slots busy while the next group forms.
    """

    def __init__(self, send: SendGroup, max_group: int = 8, max_in_flight: int = 2,
                 on_abandoned: Callable[[str, int], None] | None = None):
        self.send = send
        self.on_abandoned = on_abandoned  # (key, count) when items are dropped unsent
        self.max_group = max_group
        self.max_in_flight = max_in_flight
        self._pending: dict[str, _Pending] = {}
        self.group_sizes: dict[int, int] = {}
        self.abandoned = 0  # items dropped unsent because their caller had gone (cancelled)
        self.shed = 0  # items refused because they could not finish within their budget
        self._item_s: dict[str, float] = {}  # outlives _Pending, which goes when a key is idle

    def predicted_s(self, key: str) -> float | None:
        """Seconds until a new item for `key` would be answered, or None before any call was measured.

        The items ahead (waiting and in flight) drain through `max_in_flight` parallel calls at
        the measured seconds per item; then the new item's own call.
        """
        item_s = self._item_s.get(key)
        if item_s is None:
            return None
        pending = self._pending.get(key)
        ahead = (len(pending.waiting) + pending.items_in_flight + pending.reserved) if pending else 0
        return item_s * (ahead / self.max_in_flight + 1)

    def check(self, key: str, budget_s: float) -> None:
        """Raise Overloaded if a new item for `key` is predicted to miss `budget_s`.

        With nothing ahead of it, an item is always taken: the estimate is only refreshed by calls
        that complete, so refusing then could leave a stale estimate refusing everything for ever.
        """
        pending = self._pending.get(key)
        if pending is None or pending.idle():
            return
        predicted = self.predicted_s(key)
        if predicted is not None and predicted > budget_s:
            self.shed += 1
            raise Overloaded(predicted, budget_s, retry_after_s=predicted - self._item_s[key])

    def admit(self, key: str, budget_s: float) -> Reservation:
        """`check`, then hold the item's place until `submit` (pass the reservation) or `release()`.

        Take it when the item's remaining work before queueing is short and sure (decoding), not
        while its client still sends the body: a slow client must not hold a place for long.
        """
        self.check(key, budget_s)
        pending = self._pending.setdefault(key, _Pending())
        pending.reserved += 1
        return Reservation(self, key, pending)

    async def submit(self, key: str, item: Any, budget_s: float | None = None,
                     reservation: Reservation | None = None) -> Any:
        """Queue `item`; with `budget_s`, refused (Overloaded) if it would now miss it."""
        if reservation is not None:
            reservation.release()
        if budget_s is not None:
            self.check(key, budget_s)
        pending = self._pending.setdefault(key, _Pending())
        future = asyncio.get_running_loop().create_future()
        pending.waiting.append((item, future))
        if pending.in_flight < self.max_in_flight:
            pending.in_flight += 1
            asyncio.create_task(self._drain(key, pending))
        return await future

    async def _drain(self, key: str, pending: _Pending) -> None:
        try:
            while True:
                # A caller that went away (client disconnect, timeout) cancelled its future:
                # its item is not sent, so the model never runs work nobody waits for.
                live = [waiter for waiter in pending.waiting if not waiter[1].done()]
                gone = len(pending.waiting) - len(live)
                if gone:
                    self.abandoned += gone
                    if self.on_abandoned is not None:
                        self.on_abandoned(key, gone)
                if not live:
                    pending.waiting = []
                    break
                group, pending.waiting = live[: self.max_group], live[self.max_group :]
                self.group_sizes[len(group)] = self.group_sizes.get(len(group), 0) + 1
                pending.items_in_flight += len(group)
                started = time.perf_counter()
                try:
                    results = await self.send(key, [item for item, _ in group])
                    if len(results) != len(group):
                        raise RuntimeError(f"{len(results)} results for {len(group)} items")
                    self._measure(key, (time.perf_counter() - started) / len(group))
                except BaseException as exc:  # noqa: BLE001 - every waiter learns why
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                finally:
                    pending.items_in_flight -= len(group)
                for (_, future), result in zip(group, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            pending.in_flight -= 1
            self._forget_if_idle(key, pending)

    def _forget_if_idle(self, key: str, pending: _Pending) -> None:
        if pending.idle() and self._pending.get(key) is pending:
            del self._pending[key]

    def _measure(self, key: str, item_s: float) -> None:
        old = self._item_s.get(key)
        if old is not None:
            # One stalled call (a GC pause, a neighbour's burst) must not set the estimate alone; a
            # real slow-down still shows within a few calls, each may triple it.
            item_s = min(item_s, _MAX_STEP * old)
        self._item_s[key] = item_s if old is None else old + _EWMA_WEIGHT * (item_s - old)
