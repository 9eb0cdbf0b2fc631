"""Stop pressed in another web process reaches the process that runs the reply, through Redis.

The runner's one Stop listener per process (``runner.StopListener``) against a real Redis server;
a second ``RedisChannelLayer`` instance plays the other web process. This test plays the model's
producer: it emits the job's text, and ends the job as the scheduler does once it is cancelled.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from conversations import actions
from conversations.live import runner
from conversations.models import Message
from conversations.render import render_markdown
from inference.jobs import Delta, Finished, Job, Timings, Usage
from inference.sampling import SamplingParams
from tests.worker_process import redis_layer as layer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def prefix(settings, redis_url):
    name = f"stop{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": 15}], "prefix": name},
        }
    }
    return name


def finish_when_cancelled(job: Job, text: str) -> None:
    """What the scheduler does for a cancelled job: one Finished with the text so far."""
    job.emit(
        Finished(
            reason="cancelled",
            usage=Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=2),
            timings=Timings(0.0, 0.01, 0.01, 0.1, 0, len(job.prompt_ids), None),
            text=text,
            token_ids=None,
        )
    )


async def start_reply(conversation) -> tuple[Job, runner.Run, Message]:
    job = Job([1, 2, 3], SamplingParams(max_tokens=100), "user-1", 100)
    (message,) = await sync_to_async(actions.start_assistant_messages)(
        conversation, 1, params={}, prompt_tokens=3
    )
    run = runner.start(conversation.pk, [job], [message])
    job.emit(Delta("Once upon", (1, 2)))
    return job, run, message


async def listening(conversation_id: int, redis_url: str, prefix: str) -> None:
    """Wait until this process's listener has joined the conversation's control group in Redis
    (the group_add follows the run's registration)."""
    import redis.asyncio as redis

    group_key = layer(redis_url, prefix)._group_key(runner.control_group_name(conversation_id))
    client = redis.from_url(redis_url)
    try:
        for _ in range(500):
            channel = runner._stops.channel
            if runner._stops.runs.get(conversation_id) and channel is not None:
                if await client.zscore(group_key, channel) is not None:
                    return
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()
    raise AssertionError("the Stop listener did not join")


async def wait_cancelled(job: Job) -> None:
    for _ in range(250):
        if job.cancelled:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the Stop from the other process did not cancel the job")


async def test_a_stop_from_another_process_stops_each_reply_of_the_conversation(
    alice,
    alpha,
    prefix,
    redis_url,
) -> None:
    assert runner.shared_layer() and get_channel_layer().prefix == prefix
    conversation = await sync_to_async(actions.start_conversation)(alice, alpha, visibility="team")
    other_process = layer(redis_url, prefix)

    # Two replies one after the other: the first one's end must not take the listener with it.
    for _ in range(2):
        job, run, message = await start_reply(conversation)
        await listening(conversation.pk, redis_url, prefix)
        await runner.stop_elsewhere(conversation.pk, "stopped", layer=other_process)
        await wait_cancelled(job)
        finish_when_cancelled(job, "Once upon")
        await run.wait()
        await message.arefresh_from_db()
        assert (message.status, message.content) == (Message.Status.STOPPED, "Once upon")
        for _ in range(100):  # the run has ended: its conversation leaves the listener
            if conversation.pk not in runner._stops.runs:
                break
            await asyncio.sleep(0.02)
        assert conversation.pk not in runner._stops.runs
    await runner.stop_listening()
    await other_process.flush()


async def test_a_stop_for_another_conversation_is_ignored(alice, alpha, prefix, redis_url) -> None:
    start = sync_to_async(actions.start_conversation)
    first, second, third = [await start(alice, alpha, visibility="team") for _ in range(3)]
    job, run, message = await start_reply(first)
    await listening(first.pk, redis_url, prefix)
    marker_job, marker_run, _ = await start_reply(third)  # followed by the same listener
    await listening(third.pk, redis_url, prefix)
    other_process = layer(redis_url, prefix)
    await runner.stop_elsewhere(second.pk, "stopped", layer=other_process)
    # A Stop sent after it, over the same listener: once it has cancelled its reply, the Stop for
    # the other conversation has had its turn (the listener takes its messages in order).
    await runner.stop_elsewhere(third.pk, "stopped", layer=other_process)
    await wait_cancelled(marker_job)
    assert not job.cancelled
    finish_when_cancelled(marker_job, "Once upon")
    await marker_run.wait()
    await runner.stop_elsewhere(first.pk, "stopped", layer=other_process)
    await wait_cancelled(job)
    finish_when_cancelled(job, "Once upon")
    await run.wait()
    await runner.stop_listening()
    await other_process.flush()


async def test_a_viewer_in_another_process_gets_the_whole_answer_so_far(
    alice, alpha, prefix, redis_url
) -> None:
    """A page connected to another web process, which missed the reply's first deltas, asks for
    the whole answer so far: the process that runs the reply sends it to that page's channel after
    its next delta, at that delta's seq."""
    conversation = await sync_to_async(actions.start_conversation)(alice, alpha, visibility="team")
    other_process = layer(redis_url, prefix)
    job, run, message = await start_reply(conversation)
    await listening(conversation.pk, redis_url, prefix)
    viewer = await other_process.new_channel()
    await runner.ask_elsewhere(conversation.pk, message.pk, viewer, layer=other_process)
    for _ in range(250):
        if runner._streams[message.pk].waiting:
            break
        await asyncio.sleep(0.02)
    assert runner._streams[message.pk].waiting == {viewer}
    job.emit(Delta(" a time.\n\nThe end", (3, 4)))
    whole = await asyncio.wait_for(other_process.receive(viewer), 10)
    assert whole["type"] == "chat.whole" and whole["reset"]
    assert whole["seq"] == runner._streams[message.pk].seq >= 2
    assert whole["done"] + whole["open"] == str(render_markdown("Once upon a time.\n\nThe end"))
    job.cancel()
    finish_when_cancelled(job, "Once upon a time.\n\nThe end")
    await run.wait()
    await runner.stop_listening()
    await other_process.flush()
