"""Latest frame wins, without Ray or gRPC: a slow consumer gets the newest frames, in order."""

from __future__ import annotations

import asyncio

from serve.protocols.streams import LatestFrames, StreamStats


def test_a_newer_frame_pushes_out_the_oldest_waiting_one():
    async def main():
        stats = StreamStats()
        frames = LatestFrames(1, stats)
        for i in range(5):
            frames.put(i)
        frames.close()
        got = []
        while (item := await frames.get()) is not None:
            got.append(item[0])
        return got, stats

    got, stats = asyncio.run(main())
    assert got == [4] and stats.received == 5 and stats.dropped == 4


def test_a_consumer_keeping_up_loses_nothing_and_sees_order():
    async def main():
        stats = StreamStats()
        frames = LatestFrames(2, stats)
        got = []

        async def consume():
            while (item := await frames.get()) is not None:
                got.append(item[0])
                stats.answered_one()

        task = asyncio.create_task(consume())
        for i in range(20):
            frames.put(i)
            await asyncio.sleep(0.002)
        frames.close()
        await task
        return got, stats

    got, stats = asyncio.run(main())
    assert got == list(range(20)) and stats.dropped == 0 and stats.fps() > 0


def test_a_slow_consumer_gets_increasing_frames_and_the_last_one():
    async def main():
        stats = StreamStats()
        frames = LatestFrames(1, stats)
        got = []

        async def consume():
            while (item := await frames.get()) is not None:
                got.append(item[0])
                await asyncio.sleep(0.01)  # slower than frames arrive

        task = asyncio.create_task(consume())
        for i in range(50):
            frames.put(i)
            await asyncio.sleep(0.001)
        frames.close()
        await task
        return got, stats

    got, stats = asyncio.run(main())
    assert got == sorted(got) and got[-1] == 49 and stats.dropped == 50 - len(got) > 0
