"""The SSE answer, in process, with jobs whose events the test emits by hand: the chunk sequence of
n choices, the in-band error after the 200, and a disconnect cancelling the jobs."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from conversations import actions
from conversations.api.completions import Reply
from conversations.api.protocol import parse_chat_request
from conversations.api.tools import Output, plan_output
from conversations.live import runner
from conversations.models import Message
from inference.jobs import Delta, Finished, Job, Timings, Usage
from inference.sampling import SamplingParams

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def finished(reason: str, text: str, tokens: int, error: str | None = None) -> Finished:
    timings = Timings(0.0, 0.01, 0.01, 0.02, 0, 3, None)
    return Finished(reason, Usage(3, tokens), timings, text, tuple(range(tokens)), error)  # type: ignore[arg-type]


@database_sync_to_async
def replies_for(alice, alpha, n: int) -> list[Message]:
    conversation = actions.start_conversation(alice, alpha, source="api")
    return actions.start_assistant_messages(conversation, n, params={}, prompt_tokens=3)


@database_sync_to_async
def statuses(messages: list[Message]) -> list[tuple[str, str, str]]:
    return [(m.status, m.content, m.error) for m in Message.objects.filter(pk__in=[m.pk for m in messages])]


def plain_output(n: int) -> Output:
    """The output of a plain-text call (no tools, no grammar, no logprobs: no tokenizer needed)."""
    body = parse_chat_request({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": n})
    plan, _ = plan_output(body, None)  # type: ignore[arg-type]
    return Output(plan, None, n)  # type: ignore[arg-type]


def new_jobs(n: int) -> list[Job]:
    return [Job([1, 2, 3], SamplingParams(), "u", 10, seed_offset=i) for i in range(n)]


def decode(writes: list[bytes]) -> list:
    """The events of the stream's writes (a write may carry several)."""
    out = []
    for write in writes:
        assert write.endswith(b"\n\n")
        for event in write[:-2].split(b"\n\n"):
            assert event.startswith(b"data: ")
            data = event[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


async def test_it_streams_role_content_finish_and_usage_per_choice(alice, alpha) -> None:
    messages = await replies_for(alice, alpha, 2)
    jobs = new_jobs(2)
    run = runner.start(messages[0].conversation_id, jobs, messages)
    reply = Reply("chatcmpl-x", "tiny", 3, run, plain_output(2))
    stream = reply.stream(include_usage=True)
    events = [await anext(stream)]  # the role chunks come first, in one write
    jobs[1].emit(Delta("Hi", (5,)))
    jobs[0].emit(Delta("Yo", (6,)))
    jobs[1].emit(finished("stop", "Hi", 1))
    jobs[0].emit(finished("length", "Yo", 1))
    events += [event async for event in stream]
    chunks = decode(events)
    assert chunks[-1] == "[DONE]"
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    body = [
        (c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
        for c in chunks[2:6]
    ]
    assert body == [
        (1, {"content": "Hi"}, None),
        (0, {"content": "Yo"}, None),
        (1, {}, "stop"),
        (0, {}, "length"),
    ]
    usage = chunks[6]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
    }
    assert all(c["id"] == "chatcmpl-x" and c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    assert await statuses(messages) == [("complete", "Yo", ""), ("complete", "Hi", "")]


async def test_it_reports_an_error_after_the_200_in_band(alice, alpha) -> None:
    messages = await replies_for(alice, alpha, 2)
    jobs = new_jobs(2)
    run = runner.start(messages[0].conversation_id, jobs, messages)
    stream = Reply("chatcmpl-y", "tiny", 3, run, plain_output(2)).stream(include_usage=False)
    events = [await anext(stream)]
    jobs[0].emit(Delta("par", (5,)))
    jobs[0].emit(finished("error", "par", 1, error="the model failed to evaluate the tokens"))
    events += [event async for event in stream]
    chunks = decode(events)
    assert chunks[-1] == "[DONE]"
    error = chunks[-2]["error"]
    assert error["type"] == "server_error" and "failed to evaluate" in error["message"]
    assert jobs[1].cancelled  # the sibling choice is stopped
    jobs[1].emit(finished("cancelled", "", 0))
    await run.wait()
    assert await statuses(messages) == [
        ("error", "par", "the model failed to evaluate the tokens"),
        ("error", "", ""),
    ]


async def test_it_cancels_the_jobs_when_the_client_goes_away(alice, alpha) -> None:
    (message,) = await replies_for(alice, alpha, 1)
    (job,) = jobs = new_jobs(1)
    run = runner.start(message.conversation_id, jobs, [message])
    stream = Reply("chatcmpl-z", "tiny", 3, run, plain_output(1)).stream(include_usage=False)
    await anext(stream)
    job.emit(Delta("Once upon", (7, 8)))
    await anext(stream)
    await stream.aclose()  # what Django does when Daphne reports the disconnect
    assert job.cancelled
    job.emit(finished("cancelled", "Once upon", 2))  # the slot honours the cancel
    await run.wait()
    assert await statuses([message]) == [("cancelled", "Once upon", "")]


async def test_it_logs_a_failed_generation_with_its_error(alice, alpha) -> None:
    (message,) = await replies_for(alice, alpha, 1)
    (job,) = new_jobs(1)
    run = runner.start(message.conversation_id, [job], [message])
    job.emit(finished("error", "", 0, error="internal error: RuntimeError"))
    await run.wait()
    assert await statuses([message]) == [("error", "", "internal error: RuntimeError")]
