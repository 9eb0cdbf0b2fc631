"""The runner on a tiny real model: deltas to the conversation group, checkpoints, the final write,
and the status a cancelled reply ends with."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from conversations import actions
from conversations.live import runner
from conversations.models import Message
from inference.model import ChatModel
from inference.sampling import SamplingParams
from tests.chat_runtime import tiny_chat_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatModel]:
    with tiny_chat_model(tmp_path_factory.mktemp("runner"), context_length=1024) as model:
        yield model


def submit(model: ChatModel, max_tokens: int):
    bias = {i: -100.0 for i in model.tokenizer.special_ids}  # no early stop: exactly max_tokens
    prompt = model.prompt_ids([{"role": "user", "content": "Tell me a story."}])
    return model.scheduler.submit(
        prompt, SamplingParams(max_tokens=max_tokens, logit_bias=bias), user_key="t"
    )


@database_sync_to_async
def new_reply(alice, alpha) -> Message:
    conversation = actions.start_conversation(alice, alpha)
    actions.add_user_message(conversation, "Tell me a story.")
    (reply,) = actions.start_assistant_messages(conversation, 1, params={}, prompt_tokens=1)
    return reply


@database_sync_to_async
def reload(message: Message) -> Message:
    return Message.objects.get(pk=message.pk)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_saves_the_reply_and_publishes_coalesced_deltas(
    tiny_model, alice, alpha, monkeypatch
) -> None:
    reply = await new_reply(alice, alpha)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(actions.group_name(reply.conversation_id), channel)
    checkpoints: list[str] = []
    original = actions.checkpoint_assistant_message

    def checkpoint(message_id: int, text: str) -> None:
        checkpoints.append(text)
        original(message_id, text)

    monkeypatch.setattr(actions, "checkpoint_assistant_message", checkpoint)
    monkeypatch.setattr(runner, "CHECKPOINT_INTERVAL", 0.0)  # a checkpoint after every event

    job = submit(tiny_model, 200)
    run = runner.start(reply.conversation_id, [job], [reply])
    (finished,) = await run.wait()

    saved = await reload(reply)
    assert saved.status == "complete" and saved.finish_reason == "length"
    assert saved.content == finished.text and saved.token_ids == list(finished.token_ids)
    assert saved.completion_tokens == 200 and saved.prompt_tokens == len(job.prompt_ids)
    assert saved.duration >= saved.ttft >= saved.queue_wait >= 0
    assert checkpoints and all(finished.text.startswith(text) for text in checkpoints)

    events = []
    while True:
        event = await layer.receive(channel)
        events.append(event)
        if event["type"] == "chat.finished":
            break
    deltas = [e for e in events if e["type"] == "chat.delta"]
    assert "".join(d["text"] for d in deltas) == finished.text
    assert {(d["message_id"], d["choice_index"]) for d in deltas} == {(reply.pk, 0)}
    assert len(deltas) < 200  # coalesced: the tiny model makes hundreds of tokens a second
    assert events[-1]["status"] == "complete"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_saves_the_partial_text_of_a_cancelled_reply(tiny_model, alice, alpha) -> None:
    reply = await new_reply(alice, alpha)
    job = submit(tiny_model, 900)
    run = runner.start(reply.conversation_id, [job], [reply])
    async for event in job.aevents():
        if event.type == "delta":
            run.cancel()  # an API client went away
            break
    (finished,) = await run.wait()
    saved = await reload(reply)
    assert finished.reason == "cancelled"
    assert saved.status == "cancelled" and saved.finish_reason == ""
    assert saved.content == finished.text and 1 <= saved.completion_tokens < 900


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_records_the_reason_given_for_a_stop(tiny_model, alice, alpha) -> None:
    reply = await new_reply(alice, alpha)
    run = runner.start(reply.conversation_id, [submit(tiny_model, 900)], [reply])
    run.cancel(Message.Status.STOPPED)  # a person pressed Stop in the page
    await run.wait()
    assert (await reload(reply)).status == "stopped"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_marks_a_reply_cancelled_by_the_server_interrupted(tiny_model, alice, alpha) -> None:
    reply = await new_reply(alice, alpha)
    job = submit(tiny_model, 900)
    run = runner.start(reply.conversation_id, [job], [reply])
    job.cancel()  # not through the run: e.g. the scheduler draining at shutdown
    await run.wait()
    assert (await reload(reply)).status == "interrupted"


def test_it_maps_finish_reasons_to_statuses() -> None:
    from inference.jobs import Finished, Timings, Usage

    def finished(reason: str, error: str | None = None) -> Finished:
        return Finished(reason, Usage(3, 2), Timings(0, 0.1, 0.1, 0.2, 0, 3, None), "hi", (5, 6), error)  # type: ignore[arg-type]

    assert runner.outcome_for(finished("stop"), None).status == "complete"
    assert runner.outcome_for(finished("length"), None).finish_reason == "length"
    assert runner.outcome_for(finished("cancelled"), "cancelled").status == "cancelled"
    assert runner.outcome_for(finished("cancelled"), None).status == "interrupted"
    failed = runner.outcome_for(finished("error", "boom"), None)
    assert (failed.status, failed.error) == ("error", "boom")


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_checkpoints_save_only_what_reached_the_client(alice, alpha, monkeypatch) -> None:
    """With delivery tracked (an SSE stream), a checkpoint never saves text the client has not
    been handed: after a crash the saved text is a prefix of what the client saw. This test plays
    the producer (a job of no scheduler) and the stream (``mark_delivered``)."""
    import asyncio
    import time

    from inference.jobs import Delta, Finished, Job, Timings, Usage

    saved: list[str] = []  # each checkpoint's text, once written
    original = actions.checkpoint_assistant_message

    def checkpoint(message_id: int, text: str) -> None:
        original(message_id, text)
        saved.append(text)

    async def a_checkpoint_begun_after_now() -> None:
        # Checkpoints run one at a time: the one in flight now may have taken its text before,
        # the one after it cannot.
        target = len(saved) + 2
        deadline = time.monotonic() + 30
        while len(saved) < target:
            assert time.monotonic() < deadline, "no checkpoint"
            await asyncio.sleep(0.01)

    monkeypatch.setattr(actions, "checkpoint_assistant_message", checkpoint)
    monkeypatch.setattr(runner, "CHECKPOINT_INTERVAL", 0.05)
    reply = await new_reply(alice, alpha)
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(actions.group_name(reply.conversation_id), channel)
    job = Job([1, 2], SamplingParams(max_tokens=10), "t", 10)
    run = runner.start(reply.conversation_id, [job], [reply])
    run.track_delivery()
    job.emit(Delta("Once upon a time", (1, 2, 3, 4)))
    broadcast = await asyncio.wait_for(layer.receive(channel), 30)
    assert (broadcast["type"], broadcast["text"]) == ("chat.delta", "Once upon a time")
    await a_checkpoint_begun_after_now()  # after the text was broadcast, before any delivery
    assert (await reload(reply)).content == ""
    run.mark_delivered([len("Once upon")])
    await a_checkpoint_begun_after_now()
    assert (await reload(reply)).content == "Once upon"
    timings = Timings(0.0, 0.01, 0.01, 0.5, 0, 2, None)
    job.emit(Finished("length", Usage(2, 4), timings, "Once upon a time", (1, 2, 3, 4)))
    await run.wait()
    assert (await reload(reply)).content == "Once upon a time"  # the end: the whole reply


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_deltas_wait_for_a_few_pieces_so_a_slow_reply_costs_no_more_per_token(
    alice, alpha, monkeypatch
) -> None:
    """Fed a piece at a time, slower than PUBLISH_INTERVAL (a slow model), the runner sends the first
    piece at once, then holds each delta until it carries PUBLISH_PIECES pieces (up to
    PUBLISH_MAX_WAIT): a delta costs the page's viewers the same whatever it carries, so a slower
    reply does not cost more per token. A delta with fewer pieces goes out after PUBLISH_MAX_WAIT."""
    import asyncio

    from inference.jobs import Delta, Finished, Job, Started, Timings, Usage

    monkeypatch.setattr(runner, "PUBLISH_INTERVAL", 0.02)
    layer = get_channel_layer()

    async def reply_with_job() -> tuple[Message, Job, runner.Run, str]:
        reply = await new_reply(alice, alpha)
        channel = await layer.new_channel()
        await layer.group_add(actions.group_name(reply.conversation_id), channel)
        job = Job([1, 2], SamplingParams(max_tokens=100), "t", 100)
        run = runner.start(reply.conversation_id, [job], [reply])
        job.emit(Started(cached_tokens=0))
        return reply, job, run, channel

    async def next_delta(channel: str) -> str:
        while (event := await asyncio.wait_for(layer.receive(channel), 30))["type"] != "chat.delta":
            pass
        return event["text"]

    async def finish(reply: Message, job: Job, run: runner.Run, text: str) -> None:
        timings = Timings(0.0, 0.01, 0.01, 0.5, 0, 2, None)
        job.emit(Finished("length", Usage(2, len(text)), timings, text, None))
        await run.wait()
        assert (await reload(reply)).content == text

    # Not in this part; and longer than the machine has been up, so a runner that counts the wait
    # for the first piece from monotonic time 0 (near boot) holds it back: it must go out at once.
    monkeypatch.setattr(runner, "PUBLISH_MAX_WAIT", time.monotonic() + 600.0)
    reply, job, run, channel = await reply_with_job()
    job.emit(Delta("a", (1,)))
    assert await next_delta(channel) == "a"  # the first piece at once
    pieces = "bcdefghijklmnopqrstuvwxyzABCDEFG"  # 32: four full deltas
    for piece in pieces:
        job.emit(Delta(piece, (1,)))
        await asyncio.sleep(runner.PUBLISH_INTERVAL * 1.5)  # the pace of a slow model
    texts: list[str] = []
    while len("".join(texts)) < len(pieces):
        texts.append(await next_delta(channel))
    assert "".join(texts) == pieces
    assert all(len(text) >= runner.PUBLISH_PIECES for text in texts), texts  # a clock alone: 1 each
    await finish(reply, job, run, "a" + pieces)

    monkeypatch.setattr(runner, "PUBLISH_MAX_WAIT", 0.05)
    reply, job, run, channel = await reply_with_job()
    job.emit(Delta("a", (1,)))
    assert await next_delta(channel) == "a"
    for piece in "bcd":  # fewer than PUBLISH_PIECES, and no more come: out after PUBLISH_MAX_WAIT
        job.emit(Delta(piece, (1,)))
    assert await next_delta(channel) == "bcd"
    await finish(reply, job, run, "abcd")
