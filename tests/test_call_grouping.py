"""CallGrouper with plain asyncio: grouping under load, no wait when alone, errors reach every waiter."""

from __future__ import annotations

import asyncio

import pytest

from deployments.call_grouping import CallGrouper, Overloaded


class Downstream:
    def __init__(self, delay_s: float = 0.02, fail_on: int | None = None):
        self.calls: list[tuple[str, list]] = []
        self.delay_s, self.fail_on = delay_s, fail_on
        self.running = self.most_running = 0
        self.slow_items: dict = {}  # item -> seconds its call takes instead

    async def send(self, key: str, items: list) -> list:
        self.calls.append((key, list(items)))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await asyncio.sleep(max(self.slow_items.get(item, self.delay_s) for item in items))
        self.running -= 1
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [f"{key}:{item}" for item in items]


def test_a_lone_request_goes_at_once():
    async def main():
        down = Downstream(delay_s=0)
        grouper = CallGrouper(down.send)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await grouper.submit("m:1", 7) == "m:1:7"
        return loop.time() - t0, down.calls

    elapsed, calls = asyncio.run(main())
    assert calls == [("m:1", [7])]
    assert elapsed < 0.01


def test_concurrent_requests_share_calls_and_keep_their_own_answers():
    async def main():
        down = Downstream()
        grouper = CallGrouper(down.send, max_group=4, max_in_flight=1)
        answers = await asyncio.gather(*(grouper.submit("m:1", i) for i in range(9)))
        return answers, down.calls, grouper.group_sizes

    answers, calls, sizes = asyncio.run(main())
    assert answers == [f"m:1:{i}" for i in range(9)]
    # All nine arrived before the first call left: groups of at most 4, one call at a time.
    assert [len(items) for _, items in calls] == [4, 4, 1]
    assert sizes == {4: 2, 1: 1}


def test_keys_never_share_a_call():
    async def main():
        down = Downstream()
        grouper = CallGrouper(down.send)
        await asyncio.gather(*(grouper.submit(f"m:{i % 2}", i) for i in range(6)))
        return down.calls

    for key, items in asyncio.run(main()):
        assert all(f"m:{item % 2}" == key for item in items)


def test_a_failed_call_fails_its_group_only():
    async def main():
        down = Downstream(fail_on=3)
        grouper = CallGrouper(down.send, max_group=8, max_in_flight=1)
        first = asyncio.create_task(grouper.submit("m", 0))
        await asyncio.sleep(0)  # 0 is in flight; 1..3 form the next group
        group = [asyncio.create_task(grouper.submit("m", i)) for i in (1, 2, 3)]
        await asyncio.wait([first, *group])
        later = await grouper.submit("m", 4)
        return first, group, later

    first, group, later = asyncio.run(main())
    assert first.result() == "m:0"
    for task in group:
        with pytest.raises(ValueError, match="bad item 3"):
            task.result()
    assert later == "m:4"


def test_at_most_max_in_flight_calls_per_key():
    async def main():
        down = Downstream()
        grouper = CallGrouper(down.send, max_group=2, max_in_flight=2)
        answers = await asyncio.gather(*(grouper.submit("m", i) for i in range(10)))
        return answers, down

    answers, down = asyncio.run(main())
    assert answers == [f"m:{i}" for i in range(10)]
    assert down.most_running == 2
    assert all(len(items) <= 2 for _, items in down.calls)


def test_items_whose_callers_have_gone_are_not_sent():
    """Requests abandoned by their clients still ran on the model."""

    async def main():
        down = Downstream(delay_s=0.05)
        grouper = CallGrouper(down.send, max_group=8, max_in_flight=1)
        first = asyncio.create_task(grouper.submit("m:1", 0))
        await asyncio.sleep(0.01)  # 0 is in flight; the next ones wait for it
        waiting = [asyncio.create_task(grouper.submit("m:1", i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        waiting[0].cancel()  # what Serve does when a client disconnects or times out
        waiting[2].cancel()
        assert await first == "m:1:0" and await waiting[1] == "m:1:2"
        return down.calls, grouper.abandoned

    calls, abandoned = asyncio.run(main())
    assert calls == [("m:1", [0]), ("m:1", [2])]
    assert abandoned == 2


def test_an_item_that_cannot_finish_within_its_budget_is_refused_at_once():
    """Admission predicts the wait from the queue ahead and the measured
    seconds per item, and refuses (with when to retry) instead of queueing without bound."""

    async def main():
        down = Downstream(delay_s=0.05)  # one call of any size takes 50 ms
        grouper = CallGrouper(down.send, max_group=1, max_in_flight=1)
        await grouper.submit("m:1", 0, budget_s=0.3)  # nothing measured yet: admitted, and measured
        loop = asyncio.get_running_loop()

        async def timed(i):
            t0 = loop.time()
            try:
                await grouper.submit("m:1", i, budget_s=0.3)
                return "ok", loop.time() - t0, None
            except Overloaded as exc:
                return "shed", loop.time() - t0, exc.retry_after_s

        return await asyncio.gather(*(timed(i) for i in range(1, 21))), grouper.shed

    outcomes, shed = asyncio.run(main())
    admitted = [t for kind, t, _ in outcomes if kind == "ok"]
    refused = [(t, retry) for kind, t, retry in outcomes if kind == "shed"]
    assert 3 <= len(admitted) <= 7 and len(refused) == shed == 20 - len(admitted)
    assert max(admitted) <= 0.3 + 0.1  # every admitted item met its budget (scheduling margin)
    assert all(t < 0.01 and retry > 0 for t, retry in refused)  # refused at once, with a retry time


def test_a_stale_estimate_cannot_refuse_for_ever():
    """Seen in make bench: one stalled call set seconds-per-item above the budget, every later
    request was refused, and since only completed calls refresh the estimate, it never recovered.
    Now one stalled call moves the estimate at most 3x, and an item with nothing ahead is taken."""

    async def main():
        down = Downstream(delay_s=0.01)
        grouper = CallGrouper(down.send, max_group=1, max_in_flight=1)
        for i in range(5):
            await grouper.submit("m:1", i, budget_s=0.5)  # estimate ~10 ms per item
        down.slow_items[99] = 1.0  # one stalled call, 100x the usual
        await grouper.submit("m:1", 99, budget_s=10)
        estimate_after_stall = grouper._item_s["m:1"]
        # Nothing ahead: taken whatever the estimate, and its completion refreshes it.
        grouper._item_s["m:1"] = 100.0
        await grouper.submit("m:1", 100, budget_s=0.5)
        return estimate_after_stall, grouper._item_s["m:1"], grouper.shed

    estimate_after_stall, refreshed, shed = asyncio.run(main())
    assert estimate_after_stall < 0.01 * 3 * 1.5  # capped: at most 3x the old estimate, EWMA-weighted
    assert refreshed < 100.0 and shed == 0


def test_admitted_items_hold_their_place_until_submitted():
    """Seen under a retry flood (load_tests/overload.py): a burst all passed admission before any of
    it was queued, paid for reading and decoding, then most was refused at submit. A reservation
    counts an admitted item as queued from admission on."""

    async def main():
        down = Downstream(delay_s=0.05)
        grouper = CallGrouper(down.send, max_group=1, max_in_flight=1)
        await grouper.submit("m:1", 0, budget_s=0.3)  # measured: 50 ms per item
        blocker = asyncio.create_task(grouper.submit("m:1", 1))  # something ahead, so admission predicts
        await asyncio.sleep(0)
        admitted, refused = [], 0
        for _ in range(20):  # a burst arriving while earlier ones are still reading their bodies
            try:
                admitted.append(grouper.admit("m:1", 0.3))
            except Overloaded:
                refused += 1
        # Each reservation counts as 50 ms of work ahead: about 0.3 s / 50 ms are taken, not all 20.
        assert 3 <= len(admitted) <= 6 and refused == 20 - len(admitted)
        answers = await asyncio.gather(*(grouper.submit("m:1", 10 + i, 0.3, r) for i, r in enumerate(admitted)))
        await blocker
        admitted[0].release()  # idempotent: already released by submit
        return answers, dict(grouper._pending)

    answers, pending = asyncio.run(main())
    assert answers and all(a.startswith("m:1:1") for a in answers)
    assert pending == {}  # every reservation released, nothing left behind


def test_a_reservation_given_up_frees_its_place():
    async def main():
        down = Downstream(delay_s=0.05)
        grouper = CallGrouper(down.send, max_group=1, max_in_flight=1)
        await grouper.submit("m:1", 0)
        blocker = asyncio.create_task(grouper.submit("m:1", 1))
        await asyncio.sleep(0)
        held = [grouper.admit("m:1", 0.3) for _ in range(3)]
        before = grouper.predicted_s("m:1")
        for r in held:
            r.release()  # e.g. the body was bad or the client went away
        after = grouper.predicted_s("m:1")
        await blocker
        return before, after, dict(grouper._pending)

    before, after, pending = asyncio.run(main())
    assert before > after and pending == {}
