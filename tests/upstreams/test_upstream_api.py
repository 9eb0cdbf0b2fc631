"""/v1 for models that upstream servers run: the chatsite under test in front of chatsite itself
(``manage.py serve`` with the tiny model) and of the scripted fault server, each its own process."""

from __future__ import annotations

import http.client
import json
import threading
import time
from datetime import UTC, datetime

import pytest

from tests.live_server import NO_EOS
from tests.upstream_servers import FaultServer, chatsite_upstream, front

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    server = FaultServer(tmp_path_factory.mktemp("faults")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = chatsite_upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory, faults, upstream):
    base = faults.url.removesuffix("/v1")
    server = front(
        tmp_path_factory.mktemp("front"),
        [
            ["tiny", f"{upstream.url}/v1", "--api-key-env", "UPSTREAM_KEY", "--max-concurrent", "4"],
            ["faults", faults.url, "--read-timeout", "2"],
            [
                "tight",
                f"{base}/tight/v1",
                "--max-concurrent",
                "1",
                "--queue-max",
                "0",
                "--read-timeout",
                "30",
            ],
        ],
        command_env={"UPSTREAM_KEY": upstream.keys["alice"]},
    )
    yield server
    server.stop()


def post(site, body, **kwargs):
    status, headers, data = site.request("POST", "/v1/chat/completions", body, **kwargs)
    return status, headers, json.loads(data) if data.startswith(b"{") else data


def sse_chunks(data: bytes) -> list:
    out = []
    for line in data.decode().splitlines():
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def last_call(site):
    conversation = site.query("SELECT * FROM conversations_conversation ORDER BY id DESC LIMIT 1")[0]
    replies = site.query(
        "SELECT * FROM conversations_message WHERE conversation_id = ? AND role = 'assistant' "
        "ORDER BY choice_index",
        conversation["id"],
    )
    return conversation, replies


def wait_for_status(site, message_id: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = site.query("SELECT * FROM conversations_message WHERE id = ?", message_id)[0]
        if row["status"] != "streaming":
            return row
        time.sleep(0.05)
    raise AssertionError(f"message {message_id} still streaming")


def test_it_lists_the_embedded_and_the_upstream_models(site) -> None:
    status, _, body = site.request("GET", "/v1/models")
    cards = {card["id"]: card for card in json.loads(body)["data"]}
    assert status == 200
    assert {"front-tiny", "gpt-3.5-turbo", "upstream-tiny", "fault-ok", "tight/fault-hang"} <= set(cards)
    assert cards["upstream-tiny"]["owned_by"] == "upstream:tiny"
    status, _, body = site.request("GET", "/v1/models/fault-ok")
    assert status == 200 and json.loads(body)["id"] == "fault-ok"


def test_it_forwards_a_completion_and_logs_it(site, upstream) -> None:
    status, _, body = post(
        site, {"model": "upstream-tiny", "messages": HELLO, "max_tokens": 5, "temperature": 0}
    )
    assert status == 200, body
    assert body["model"] == "upstream-tiny" and body["object"] == "chat.completion"
    text = body["choices"][0]["message"]["content"]
    conversation, (reply,) = last_call(site)
    assert conversation["model_id"] == "upstream-tiny" and conversation["source"] == "api"
    params = json.loads(reply["params"])
    assert params["upstream"] == "tiny" and params["temperature"] == 0 and params["max_tokens"] == 5
    assert reply["status"] == "complete" and reply["content"] == text
    assert reply["completion_tokens"] == body["usage"]["completion_tokens"]
    assert reply["prompt_tokens"] == body["usage"]["prompt_tokens"]
    # The upstream (chatsite) logged the same call under the key the connection holds.
    assert upstream.query("SELECT content FROM conversations_message ORDER BY id DESC LIMIT 1")[0][0] == text


def test_it_streams_the_upstreams_chunks_with_the_asked_model(site) -> None:
    body = {
        "model": "upstream-tiny",
        "messages": HELLO,
        "max_tokens": 12,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    status, headers, data = post(site, body)
    chunks = sse_chunks(data)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert chunks[-1] == "[DONE]"
    assert all(c["model"] == "upstream-tiny" for c in chunks[:-1])
    assert all("usage" not in c for c in chunks[:-1])  # not asked for: not sent
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1] if c["choices"])
    _, (reply,) = last_call(site)
    assert reply["status"] == "complete" and reply["content"] == text and reply["completion_tokens"] == 12
    assert reply["ttft"] is not None and reply["duration"] >= reply["ttft"] and reply["queue_wait"] >= 0

    status, _, data = post(site, {**body, "stream_options": {"include_usage": True}})
    usage = [c for c in sse_chunks(data)[:-1] if c.get("usage")]
    assert len(usage) == 1 and usage[0]["usage"]["completion_tokens"] == 12 and usage[0]["choices"] == []


def test_it_passes_through_what_only_an_upstream_can_honour(site, faults) -> None:
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "top_k": 5,
    }
    status, _, body = post(site, {"model": "fault-echo", "messages": HELLO, **extra})
    assert status == 200, body
    forwarded = faults.wait_for(lambda r: r.get("model") == "fault-echo")
    assert {k: forwarded[k] for k in extra} == extra
    # The embedded model refuses what it cannot honour (it now does tools, response_format and
    # logprobs itself, by constrained decoding; top_k is not in OpenAI's API).
    status, _, body = post(site, {"model": "front-tiny", "messages": HELLO, "top_k": 5})
    assert status == 400 and "top_k" in body["error"]["message"], body


def test_it_checks_requests_as_for_the_embedded_model(site) -> None:
    status, _, body = post(site, {"model": "fault-ok", "messages": HELLO, "temperature": 5})
    assert status == 400 and body["error"]["param"] == "temperature"
    status, _, body = post(site, {"model": "fault-ok", "messages": [{"role": "robot", "content": "x"}]})
    assert status == 400 and body["error"]["param"] == "messages[0].role"
    status, _, body = post(site, {"model": "fault-ok", "messages": [{"role": "tool", "content": "a\u0000b"}]})
    assert status == 400 and body["error"]["param"] == "messages[0].content"
    status, _, body = post(site, {"model": "fault-ok", "messages": HELLO}, key="revoked")
    assert status == 401
    status, _, body = post(site, b"x", headers={"Content-Type": "text/plain"})
    assert status == 415


def test_it_maps_upstream_errors(site) -> None:
    status, _, body = post(site, {"model": "fault-400", "messages": HELLO})
    assert status == 400 and body["error"]["code"] == "fault_refused"  # passed through
    status, _, body = post(site, {"model": "fault-500", "messages": HELLO, "stream": True})
    assert status == 502 and body["error"]["type"] == "upstream_error"
    started = time.monotonic()
    status, _, body = post(site, {"model": "fault-hang", "messages": HELLO, "stream": True})
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("model", ["fault-halfway", "fault-malformed"])
def test_it_ends_a_stream_cut_short_in_band_and_keeps_its_text(site, model) -> None:
    status, _, data = post(site, {"model": model, "messages": HELLO, "stream": True})
    chunks = sse_chunks(data)
    assert status == 200 and chunks[-1] == "[DONE]"
    assert chunks[-2]["error"]["type"] == "upstream_error"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if isinstance(c, dict) and c.get("choices")
    )
    _, (reply,) = last_call(site)
    assert reply["content"] == text and text.startswith("one")
    assert reply["status"] == "interrupted" and reply["error"]


def test_it_counts_the_usage_an_upstream_does_not_send(site) -> None:
    status, _, data = post(
        site,
        {"model": "fault-ok", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert status == 200
    _, (reply,) = last_call(site)
    assert reply["content"] == "one two three four"
    assert reply["completion_tokens"] > 0 and reply["prompt_tokens"] > 0


def test_it_answers_429_when_the_connections_queue_is_full(site, faults) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    body = json.dumps({"model": "tight/fault-hang", "messages": HELLO, "stream": True})
    headers = {"Authorization": f"Bearer {site.keys['alice']}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body, headers)
    faults.wait_for(lambda r: r.get("model") == "tight/fault-hang")
    try:
        status, headers, body = post(site, {"model": "tight/fault-ok", "messages": HELLO})
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert body["error"]["type"] == "requests"
    finally:
        conn.close()


def test_it_closes_a_hanging_upstream_call_when_the_client_goes_away(site, faults) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    body = json.dumps(
        {"model": "tight/fault-hang", "messages": [{"role": "user", "content": "bye"}], "stream": True}
    )
    headers = {"Authorization": f"Bearer {site.keys['alice']}", "Content-Type": "application/json"}
    before = len([r for r in faults.requests() if "disconnected" in r])
    conn.request("POST", "/v1/chat/completions", body, headers)
    faults.wait_for(lambda r: r.get("messages") == [{"role": "user", "content": "bye"}])
    conn.sock.shutdown(2)
    conn.close()
    closed = time.time()
    deadline = time.monotonic() + 5
    while (
        time.monotonic() < deadline and len([r for r in faults.requests() if "disconnected" in r]) == before
    ):
        time.sleep(0.02)
    disconnected = [r["disconnected"] for r in faults.requests() if "disconnected" in r]
    assert len(disconnected) > before and disconnected[-1] - closed < 1.0


def test_it_stops_the_upstream_generation_when_the_client_goes_away(site, upstream) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    body = {
        "model": "upstream-tiny",
        "messages": [{"role": "user", "content": "A long one"}],
        "max_tokens": 1500,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    headers = {"Authorization": f"Bearer {site.keys['alice']}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    assert response.status == 200
    seen = ""
    while len(seen) < 20:
        line = response.readline().strip()
        if line.startswith(b"data: {"):
            seen += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    conn.sock.shutdown(2)
    conn.close()
    closed = datetime.now(UTC)
    row = upstream.query(
        "SELECT id FROM conversations_message WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )[0]
    ended = wait_for_status(upstream, row["id"])
    assert ended["status"] == "cancelled"
    heartbeat = datetime.fromisoformat(str(ended["heartbeat_at"])).replace(tzinfo=UTC)  # SQLite: naive UTC
    assert (heartbeat - closed).total_seconds() < 1.0
    _, (reply,) = last_call(site)
    reply = wait_for_status(site, reply["id"])
    assert reply["status"] == "cancelled" and reply["content"].startswith(seen[:10])


def test_it_streams_n_choices_from_one_upstream_call(site) -> None:
    body = {
        "model": "upstream-tiny",
        "messages": HELLO,
        "max_tokens": 4,
        "n": 2,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    status, _, data = post(site, body)
    assert status == 200
    texts = ["", ""]
    for chunk in sse_chunks(data)[:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    _, replies = last_call(site)
    assert [r["content"] for r in replies] == texts and all(r["status"] == "complete" for r in replies)


def test_it_serves_concurrent_streams(site) -> None:
    results: list[int] = []

    def one() -> None:
        status, _, data = post(site, {"model": "fault-ok", "messages": HELLO, "stream": True})
        results.append(status if sse_chunks(data)[-1] == "[DONE]" else -1)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8


def test_it_answers_the_openai_sdk_for_an_upstream_model(site) -> None:
    import openai

    client = openai.OpenAI(api_key=site.keys["alice"], base_url=f"{site.url}/v1", max_retries=0)
    completion = client.chat.completions.create(
        model="upstream-tiny", messages=HELLO, max_tokens=4, logit_bias=NO_EOS
    )
    assert completion.model == "upstream-tiny" and completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens >= 1

    stream = client.chat.completions.create(
        model="upstream-tiny",
        messages=HELLO,
        max_tokens=6,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
        logit_bias=NO_EOS,
    )
    texts = {0: "", 1: ""}
    usage = None
    for chunk in stream:
        assert chunk.model == "upstream-tiny"
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] and texts[1] and usage is not None and usage.completion_tokens == 12

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="fault-400", messages=HELLO)
    assert refused.value.code == "fault_refused"
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="fault-500", messages=HELLO)
    assert failed.value.status_code == 502
