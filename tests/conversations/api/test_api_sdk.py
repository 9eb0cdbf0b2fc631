"""The official openai SDK against a live server running the real default model.

Small max_tokens everywhere: the model runs on two cores.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import TYPE_CHECKING

import pytest

from tests.fixtures_model import default_tokenizer

if TYPE_CHECKING:
    import openai

pytestmark = [pytest.mark.model, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
EOS = "2"  # <|im_end|>: banned where a test needs the full max_tokens


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    import openai  # here: collecting this module (make test-fast deselects it) then imports no SDK

    return openai.OpenAI(api_key=api_server.keys["alice"], base_url=f"{api_server.url}/v1", max_retries=0)


def last_conversation(api_server):
    return api_server.query("SELECT * FROM conversations_conversation ORDER BY id DESC LIMIT 1")[0]


def replies(api_server, conversation_id: int):
    return api_server.query(
        "SELECT * FROM conversations_message WHERE conversation_id = ? AND role = 'assistant' "
        "ORDER BY choice_index",
        conversation_id,
    )


def test_it_answers_the_sync_client(client, api_server) -> None:
    completion = client.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, max_tokens=8)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "SmolLM2-135M-Instruct.Q4_1"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 1 <= usage.completion_tokens <= 8


def test_it_logs_every_call(client, api_server) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo-0301",
        messages=[{"role": "system", "content": "Be brief."}, *QUESTION],
        max_tokens=6,
        temperature=0.5,
        user="script-7",
    )
    conversation = last_conversation(api_server)
    key = api_server.query("SELECT * FROM conversations_apikey WHERE name = 'tests'")[0]
    owner = api_server.query("SELECT username FROM auth_user WHERE id = ?", conversation["owner_id"])[0]
    team = api_server.query("SELECT name FROM conversations_team WHERE id = ?", conversation["team_id"])[0]
    assert conversation["source"] == "api"
    assert conversation["api_key_id"] == key["id"] and key["last_used_at"] is not None
    assert owner["username"] == "alice" and team["name"] == "alpha"
    assert conversation["request_user"] == "script-7"
    assert conversation["model_id"] == "SmolLM2-135M-Instruct.Q4_1"
    messages = api_server.query(
        "SELECT * FROM conversations_message WHERE conversation_id = ? ORDER BY id", conversation["id"]
    )
    assert [(m["role"], m["content"]) for m in messages[:2]] == [
        ("system", "Be brief."),
        ("user", QUESTION[0]["content"]),
    ]
    reply = messages[2]
    assert reply["role"] == "assistant" and reply["status"] == "complete"
    assert reply["content"] == completion.choices[0].message.content
    assert reply["finish_reason"] == completion.choices[0].finish_reason
    assert reply["prompt_tokens"] == completion.usage.prompt_tokens
    assert reply["completion_tokens"] == completion.usage.completion_tokens
    assert len(json.loads(reply["token_ids"])) == completion.usage.completion_tokens
    params = json.loads(reply["params"])
    assert params["temperature"] == 0.5 and params["max_tokens"] == 6 and params["n"] == 1
    assert params["model"] == "gpt-3.5-turbo-0301" and params["id"] == completion.id
    assert reply["queue_wait"] >= 0 and reply["ttft"] > 0 and reply["duration"] >= reply["ttft"]


def test_it_answers_the_async_client(api_server) -> None:
    import openai  # here: collecting this module (make test-fast deselects it) then imports no SDK

    async def ask() -> list[str]:
        async with openai.AsyncOpenAI(
            api_key=api_server.keys["bob"], base_url=f"{api_server.url}/v1", max_retries=0
        ) as aclient:
            results = await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model="gpt-3.5-turbo", messages=QUESTION, max_tokens=4, temperature=0
                    )
                    for _ in range(2)
                )
            )
        return [r.choices[0].message.content for r in results]

    first, second = asyncio.run(ask())
    assert first and first == second  # greedy: the same answer, whichever slot and cache state


def test_it_streams(client, api_server) -> None:
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=QUESTION,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [finishes[0]] and finishes[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 10
    (reply,) = replies(api_server, last_conversation(api_server)["id"])
    assert reply["status"] == "complete" and reply["content"] == content


def test_it_gives_n_independent_choices(client, api_server) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=STORY,
        max_tokens=12,
        n=2,
        temperature=1.5,
        seed=11,
        logit_bias={EOS: -100},
    )
    assert [c.index for c in completion.choices] == [0, 1]
    first, second = (c.message.content for c in completion.choices)
    assert first != second
    assert completion.usage.completion_tokens == 24
    rows = replies(api_server, last_conversation(api_server)["id"])
    assert [(r["choice_index"], r["content"]) for r in rows] == [(0, first), (1, second)]


def test_it_streams_n_choices_tagged_by_index(client) -> None:
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=QUESTION, max_tokens=5, n=2, stream=True, logit_bias={EOS: -100}
    )
    texts = {0: "", 1: ""}
    roles, finishes = [], []
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.role:
                roles.append(choice.index)
            if choice.finish_reason:
                finishes.append((choice.index, choice.finish_reason))
    assert sorted(roles) == [0, 1]
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    assert texts[0] and texts[1]


def test_it_stops_at_a_stop_sequence(client) -> None:
    plain = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=STORY, max_tokens=16, temperature=0, logit_bias={EOS: -100}
    )
    text = plain.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=STORY, max_tokens=16, temperature=0, stop=[stop, "zzzz"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_it_stops_at_max_tokens(client) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=STORY, max_tokens=5, logit_bias={EOS: -100}
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5
    same = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=STORY, max_completion_tokens=5, logit_bias={EOS: -100}
    )
    assert same.usage.completion_tokens == 5


def test_it_forces_a_token_with_logit_bias(client) -> None:
    (token,) = default_tokenizer().encode(" banana")[:1]
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=QUESTION, max_tokens=4, logit_bias={str(token): 100}
    )
    assert completion.choices[0].message.content == default_tokenizer().decode([token] * 4)


def test_it_repeats_a_seed(client) -> None:
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model="gpt-3.5-turbo", messages=STORY, max_tokens=10, temperature=1.2, seed=seed
        )
        return completion.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert sample(99) != first


def test_it_accepts_content_parts_and_metadata(client) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}],
        max_tokens=3,
        metadata={"job": "nightly"},
        store=False,
        response_format={"type": "text"},
    )
    assert completion.choices[0].message.content


def test_it_lists_and_retrieves_models(client) -> None:
    import openai  # here: collecting this module (make test-fast deselects it) then imports no SDK

    ids = [m.id for m in client.models.list()]
    assert ids == ["SmolLM2-135M-Instruct.Q4_1", "gpt-3.5-turbo", "gpt-3.5-turbo-0301"]
    assert client.models.retrieve("gpt-3.5-turbo").owned_by == "chatsite"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_it_raises_the_sdk_typed_errors(client, api_server) -> None:
    import openai  # here: collecting this module (make test-fast deselects it) then imports no SDK

    bad_key = openai.OpenAI(api_key="csk-nope", base_url=f"{api_server.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, max_tokens=1)
    assert auth.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=1)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, temperature=2.5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"not": {}}}}],
        )
    assert unsupported.value.param == "tools[0].function.parameters" and "not" in unsupported.value.message


def open_stream(api_server, body: dict) -> http.client.HTTPConnection:
    """Start a streaming request and read until its first content chunk."""
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=60)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps({**body, "stream": True}),
        {"Authorization": f"Bearer {api_server.keys['alice']}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200
    seen = 0
    while seen < 2:  # the role chunk, then a content chunk
        line = response.fp.readline()
        seen += line.startswith(b"data: ")
    return conn


def test_it_answers_429_when_the_queue_is_full_before_writing_anything(client, api_server) -> None:
    import openai  # here: collecting this module (make test-fast deselects it) then imports no SDK

    body = {"model": "gpt-3.5-turbo", "messages": STORY, "max_tokens": 400, "logit_bias": {EOS: -100}}
    conn = open_stream(api_server, body)
    try:
        before = api_server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"]
        # One slot (busy) and a queue of one: two choices cannot both be admitted.
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, max_tokens=2, n=2)
        assert limited.value.response.headers["retry-after"] == "2"
        after = api_server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"]
        assert after == before
    finally:
        conn.close()


def test_it_cancels_and_logs_a_dropped_stream(client, api_server) -> None:
    body = {"model": "gpt-3.5-turbo", "messages": STORY, "max_tokens": 400, "logit_bias": {EOS: -100}}
    conn = open_stream(api_server, body)
    conversation_id = last_conversation(api_server)["id"]
    conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (reply,) = replies(api_server, conversation_id)
        if reply["status"] != "streaming":
            break
        time.sleep(0.1)
    assert reply["status"] == "cancelled"
    assert reply["content"] and 1 <= reply["completion_tokens"] < 400
    assert reply["finish_reason"] == ""
    # The slot is free again at once: a new request does not queue behind the rest of the 400
    # tokens (the logged queue wait, not the wall clock, so that a busy machine does not matter).
    client.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, max_tokens=2)
    (answer,) = replies(api_server, last_conversation(api_server)["id"])
    assert answer["status"] == "complete" and answer["queue_wait"] < 0.5, answer


def test_it_cancels_a_non_streaming_call_whose_client_went_away(api_server) -> None:
    before = last_conversation(api_server)["id"]
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=60)
    body = {"model": "gpt-3.5-turbo", "messages": STORY, "max_tokens": 400, "logit_bias": {EOS: -100}}
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {api_server.keys['alice']}", "Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 20
    while last_conversation(api_server)["id"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    conversation_id = last_conversation(api_server)["id"]
    assert conversation_id != before
    # It generates: text reaches the row (a checkpoint, about a second in), then the client goes.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (reply,) = replies(api_server, conversation_id)
        if reply["content"] or reply["status"] != "streaming":
            break
        time.sleep(0.05)
    assert reply["content"] and reply["status"] == "streaming", reply
    conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (reply,) = replies(api_server, conversation_id)
        if reply["status"] != "streaming":
            break
        time.sleep(0.1)
    assert reply["status"] == "cancelled" and reply["completion_tokens"] < 400
