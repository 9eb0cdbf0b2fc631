"""A job's events reach every listener in the order the job emitted them, even a listener that
subscribes while the job is running (inference/jobs.py ``Job.subscribe``: the past events first,
then the new ones).

Found in full suite runs: a reply's saved text (the job's own, in order) and the text a stream
sent had the same pieces in another order (the chat's deltas in
tests/conversations/test_chat_consumer.py; an upstream's SSE stream, saved reordered by the front
in tests/upstreams/test_upstream_chat.py): the stream's pump had subscribed while the tiny model
was emitting.
"""

from __future__ import annotations

import threading

from inference.jobs import Delta, Job
from inference.sampling import SamplingParams


def test_an_event_emitted_while_a_listener_subscribes_comes_after_the_past_ones() -> None:
    job = Job([1, 2, 3], SamplingParams(), "user", 16)
    for text in ("a", "b", "c"):
        job.emit(Delta(text, ()))
    seen: list[str] = []
    arrived = threading.Event()
    producer: list[threading.Thread] = []

    def listener(event) -> None:
        seen.append(event.text)
        if event.text == "d":
            arrived.set()
        if not producer:  # the first past event: the producer emits the next one meanwhile
            thread = threading.Thread(target=job.emit, args=(Delta("d", ()),))
            producer.append(thread)
            thread.start()
            # Before the fix it arrived here at once, before "b" and "c". Now it waits for the
            # replay to end (the job's lock), so this wait runs out.
            arrived.wait(0.5)

    job.subscribe(listener)
    producer[0].join(10)
    assert seen == ["a", "b", "c", "d"]


def test_a_pump_armed_after_k_is_woken_by_the_kth_delta_and_not_before() -> None:
    """``EventPump.arm(after=k)``: the consumer (the chat's runner, waiting for a delta's worth of
    text) is woken by the k-th Delta from then on, not by each one; other events wake it always."""
    import asyncio

    from inference.jobs import EventPump, Queued

    async def main() -> list[tuple[str, bool]]:
        job = Job([1, 2, 3], SamplingParams(), "user", 16)
        woken: list[tuple[str, bool]] = []
        with EventPump([job]) as pump:
            job.emit(Delta("first", ()))  # armed at first: wakes
            woken.append(("first", await pump.wait(timeout=5)))
            pump.take()
            pump.arm(after=3)
            waiter = asyncio.create_task(pump.wait(timeout=30))
            await asyncio.sleep(0)  # the waiter is waiting, nothing pending
            for text in ("x", "y"):
                job.emit(Delta(text, ()))
                await asyncio.sleep(0)  # a wake-up it sent has run before this returns
                woken.append((text, pump._ready.is_set()))
            job.emit(Delta("z", ()))
            woken.append(("z", await waiter))
            pump.take()
            waiter = asyncio.create_task(pump.wait(timeout=30))
            await asyncio.sleep(0)
            job.emit(Queued(n_ahead=1))  # not a Delta: wakes although disarmed
            woken.append(("queued", await waiter))
        return woken

    assert asyncio.run(main()) == [("first", True), ("x", False), ("y", False), ("z", True), ("queued", True)]
