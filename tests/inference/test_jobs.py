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
