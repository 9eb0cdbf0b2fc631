"""A worker's shutdown never costs a running job its last event (tests/inference/
test_worker_identity.py has the other tests of a worker's end): real Redis, the worker's loop in
this process on a real scheduler with two slots.

A module of its own: its test is marked cpu_exclusive (two ggml threads, run while the other test
workers wait), and tests/xdist_groups.py hands a module with such a test out last, whole; the other
tests of a worker's end then run in the suite's busy middle, not in its serial end.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from channels_redis.core import RedisChannelLayer

from inference.model import ChatModel
from inference.remote import client as worker_module
from inference.remote.server import Worker
from tests.inference.test_worker_identity import first_delta, prefix
from tests.worker_process import ids, new_client, no_eos, run

__all__ = ["prefix"]  # the fixture, shared with test_worker_identity.py


class HeldRedis(RedisChannelLayer):
    """Real Redis, holding the last job's last event until the worker, having drained its
    scheduler, queues its next message (an alive message, ``ALIVE_INTERVAL`` later): that send is
    still under way when the worker is on its way out, and a worker that left without waiting for
    it would have cancelled it. (Only the last end: the outbox sends in order, and a held end would
    hold the other job's text and the alive messages behind it.)"""

    worker: Worker
    drained: asyncio.Event

    async def send(self, channel, message):
        if message.get("type") == "inference.event" and message["event"]["type"] == "finished":
            if not self.worker.jobs:  # the sender forgets a job as its end goes out
                await self.drained.wait()
                queued, deadline = self.worker.outbox.qsize(), time.monotonic() + 10
                while self.worker.outbox.qsize() <= queued:
                    assert time.monotonic() < deadline, "the worker queued nothing after its drain"
                    await asyncio.sleep(0.01)
        await super().send(channel, message)


@pytest.mark.slow  # 300 tokens on two slots, then the worker's next alive tick
@pytest.mark.cpu_exclusive  # two ggml threads
@pytest.mark.django_db
def test_it_sends_every_last_event_before_the_worker_exits(
    tiny, redis_url, prefix, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(worker_module, "WORKER_SILENCE", 3.0)
    model = ChatModel.load(tiny, cache_dir=tmp_path / "cache", slots=2, threads=2)
    layer = HeldRedis(hosts=[{"address": redis_url, "socket_timeout": 15}], prefix=prefix)
    worker = layer.worker = Worker(model.scheduler, layer)
    drain = model.scheduler.drain

    async def scenario():
        loop = asyncio.get_running_loop()
        layer.drained = asyncio.Event()

        def drain_and_tell(timeout: float) -> None:
            drain(timeout)  # the real drain
            if not loop.is_closed():  # (model.close drains too, after the scenario)
                loop.call_soon_threadsafe(layer.drained.set)

        monkeypatch.setattr(model.scheduler, "drain", drain_and_tell)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(30, stop=stop))
        client = new_client(redis_url, prefix)
        jobs = await client.submit_n(ids(tiny, "shutdown"), no_eos(max_tokens=300), 2)
        await first_delta(jobs[0])
        stop.set()  # SIGTERM: running jobs may finish, and their ends must reach the web process
        ends = await asyncio.gather(*(asyncio.to_thread(j.wait, 30) for j in jobs))
        await asyncio.wait_for(serving, 30)
        return ends

    try:
        ends = run(asyncio.wait_for(scenario(), 90))
    finally:
        model.close()
    assert [(e.reason, e.usage.completion_tokens) for e in ends] == [("length", 300)] * 2
