"""Job ids and the end of a worker: a restarted worker and a worker's shutdown never cost a job
its reply (real Redis, real worker processes on the tiny
model, or the worker's loop in this process on a real scheduler)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from channels_redis.core import RedisChannelLayer

from inference.jobs import Delta, Queued
from inference.model import ChatModel
from inference.remote import client as worker_module
from inference.remote.server import Worker
from tests.paced_model import PACE_MS
from tests.worker_process import ids, new_client, no_eos, run, start_worker, stop_worker


@pytest.fixture
def prefix() -> str:
    return f"test{uuid.uuid4().hex[:8]}"


async def first_delta(job) -> None:
    async for event in job.aevents():
        if isinstance(event, Delta):
            return


PACED = {"CHAT_TEST_ENGINE": f"paced:{PACE_MS}"}


@pytest.mark.slow  # worker processes
def test_it_keeps_a_restarted_workers_jobs_apart_from_the_old_ones(
    tiny, redis_url, prefix, tmp_path, monkeypatch
) -> None:
    # Long enough for x to still wait for its old reply when the new worker runs y's (shortened
    # below once it does).
    monkeypatch.setattr(worker_module, "WORKER_SILENCE", 30.0)
    old = start_worker(tiny, redis_url, prefix, tmp_path / "old", CHAT_SLOTS="1")
    new = None
    try:

        async def scenario():
            nonlocal new
            x = new_client(redis_url, prefix)  # one web process...
            y = new_client(redis_url, prefix)  # ...and another
            [lost] = await x.submit_n(ids(tiny, "first"), no_eos(max_tokens=480), 1)
            await first_delta(lost)
            old.kill()  # the worker dies in the middle of x's reply, and comes back
            old.wait(10)
            new = await asyncio.to_thread(  # paced: its replies last 480 x 20 ms (9.6 s)
                start_worker, tiny, redis_url, prefix, tmp_path / "new", CHAT_SLOTS="2", **PACED
            )
            [theirs] = await y.submit_n(ids(tiny, "second"), no_eos(max_tokens=480), 1)
            [mine] = await x.submit_n(ids(tiny, "third"), no_eos(max_tokens=480), 1)
            await first_delta(theirs)
            lost.cancel()  # a Stop on x's old reply must not reach y's new one
            # x gives its old reply up once the old worker has been silent for this long, while the
            # new worker keeps talking to x (its replies last 9.6 s). Not 1 s, with unpaced replies:
            # a 1 s stall of the new worker or of x's loop then also gave up x's new reply (once, in
            # a quiet suite run).
            monkeypatch.setattr(worker_module, "WORKER_SILENCE", 3.0)
            ends = await asyncio.gather(*(asyncio.to_thread(j.wait, 60) for j in (lost, theirs, mine)))
            return ends

        lost, theirs, mine = run(asyncio.wait_for(scenario(), 120))
        # x's old reply ends (the new worker's messages to x do not keep it waiting forever).
        assert lost is not None and lost.reason == "cancelled" and "has not answered" in lost.error
        assert theirs is not None and theirs.reason == "length" and theirs.usage.completion_tokens == 480
        assert mine is not None and mine.reason == "length" and mine.usage.completion_tokens == 480
    finally:
        old.kill()
        if new is not None:
            stop_worker(new)


def test_a_jobs_events_are_made_messages_by_the_sender_not_on_the_slots_thread(
    tiny, redis_url, prefix, tmp_path, monkeypatch
) -> None:
    """The slot's thread hands each event over as it is; the worker's event loop (its sender) turns
    it into the protocol's message, so that no token waits for its predecessor's serialisation."""
    from inference.remote import messages

    threads: set[str] = set()
    to_dict = messages.event_to_dict

    def recording(event):  # the real serialisation, noting the thread it runs on
        threads.add(threading.current_thread().name)
        return to_dict(event)

    monkeypatch.setattr(messages, "event_to_dict", recording)
    # At the tests' pace (tests/paced_model.py): the busy job lasts seconds, whatever the machine.
    model = ChatModel.load(tiny, cache_dir=tmp_path / "cache", slots=1, threads=1, token_pace=PACE_MS / 1000)
    worker = Worker(model.scheduler, RedisChannelLayer(hosts=[redis_url], prefix=prefix))

    async def scenario():
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(30, stop=stop))
        client = new_client(redis_url, prefix)
        # The one slot is busy until the test cancels its job: the job followed here runs only
        # once the worker listens to it, so its events come from the slot's thread.
        [busy] = await client.submit_n(ids(tiny, "busy"), no_eos(max_tokens=450), 1)
        [job] = await client.submit_n(ids(tiny, "serialise"), no_eos(max_tokens=20), 1)
        events = job.aevents()
        first = await anext(events)
        assert isinstance(first, Queued)  # the worker is listening to it
        busy.cancel()
        events = [first, *[e async for e in events]]
        stop.set()
        await asyncio.wait_for(serving, 30)
        return events, threading.current_thread().name

    try:
        events, loop_thread = run(asyncio.wait_for(scenario(), 90))
    finally:
        model.close()
    finished = events[-1]
    assert finished.reason == "length" and finished.usage.completion_tokens == 20
    assert "".join(e.text for e in events if isinstance(e, Delta)) == finished.text
    assert threads == {loop_thread}


def test_a_job_event_message_is_the_protocols_own() -> None:
    from inference.jobs import Started
    from inference.remote import messages

    made = messages.job_event("w", "j", Delta("hi", (1, 2)))
    assert made == messages.dump(messages.JobEvent(worker="w", job_id="j", event=made["event"]))
    parsed = messages.parse(made)
    assert isinstance(parsed, messages.JobEvent) and messages.event_from_dict(parsed.event) == Delta(
        "hi", (1, 2)
    )
    assert messages.parse(messages.job_event("w", "j", Started(3))).event == {
        "type": "started",
        "cached_tokens": 3,
    }


@pytest.mark.django_db
def test_it_waits_for_room_in_a_full_channel_instead_of_dropping_events(
    tiny, redis_url, prefix, tmp_path
) -> None:
    """The tiny model makes its tokens far faster than a web process reads them; with room for one
    message in a channel (channels_redis' ``capacity``, 100 by default), sends find it full. The
    sender waits for room: every token reaches the web process, and the reply ends (a dropped
    event once cost the reply its end: "the inference worker no longer has this job")."""
    model = ChatModel.load(tiny, cache_dir=tmp_path / "cache", slots=1, threads=1)
    worker = Worker(model.scheduler, RedisChannelLayer(hosts=[redis_url], prefix=prefix, capacity=1))

    async def scenario():
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(30, stop=stop))
        client = new_client(redis_url, prefix)
        [job] = await client.submit_n(ids(tiny, "full"), no_eos(max_tokens=200), 1)
        tokens: list[int] = []
        async for event in job.aevents():
            if isinstance(event, Delta):
                tokens.extend(event.token_ids)
        end = await asyncio.to_thread(job.wait, 30)
        stop.set()
        await asyncio.wait_for(serving, 30)
        return tokens, end

    try:
        tokens, end = run(asyncio.wait_for(scenario(), 90))
    finally:
        model.close()
    assert worker.full_waits > 0  # the channel was full
    assert end is not None and end.reason == "length" and end.usage.completion_tokens == 200
    assert len(tokens) == 200
