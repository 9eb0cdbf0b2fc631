"""The limits (review/limits.py) on calls an upstream server answers, in process: the real ASGI
application and the database's counters in front of the scripted fault server (another process);
the tiny random model counts the tokens the upstream does not report."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from conversations import actions
from conversations.models import Conversation, Message
from review import limits
from tests.chat_runtime import serving, tiny_chat_model
from tests.upstream_servers import FaultServer
from tests.ws_chat import connect, finish_run, receive_until
from upstreams import registry
from upstreams import services as upstream_services

# A minute that ends mid-test would reset the per-minute counts the tests rely on.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("limits_clock"),
]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    server = FaultServer(tmp_path_factory.mktemp("faults-limits")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with tiny_chat_model(
        tmp_path_factory.mktemp("tiny-upstream-limits"), context_length=2048, queue_max=8
    ) as model:
        yield model


@pytest.fixture
def site(tiny_model, faults):
    with serving(tiny_model):
        upstream_services.create_upstream(
            "faults", faults.url, read_timeout=30, models=["fault-ok", "fault-500", "fault-slow"]
        )
        registry.invalidate()
        yield
        registry.invalidate()


@pytest.fixture
def key(alice, alpha):
    return actions.create_api_key(alice, alpha, "limited")


async def call(raw: str, model: str = "fault-ok", max_tokens: int = 50, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    body.update(extra)
    return await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )


def set_limits(**kwargs):
    return sync_to_async(limits.set_limits)(by=None, **kwargs)


async def used_by(team) -> int:
    (rule,) = limits.rules_for(await sync_to_async(limits.limits_for)(team.pk, None), limits.time.time())
    (used,) = await sync_to_async(limits.read_used)([rule])
    return used


async def api_calls() -> int:
    return await Conversation.objects.filter(source=Conversation.Source.API).acount()


async def test_it_answers_429_to_an_upstream_call_over_the_requests_per_minute(site, key, faults) -> None:
    api_key, raw = key
    await set_limits(api_key=api_key, requests_per_minute=1)
    first = await call(raw)
    assert first.status_code == 200, first.content
    assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("1", "0")
    sent = len(faults.requests())
    before = await api_calls()
    refused = await call(raw)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert await api_calls() == before and len(faults.requests()) == sent  # no write, nothing sent on


async def test_it_settles_an_upstream_call_with_its_real_usage(site, key, alpha) -> None:
    api_key, raw = key
    await set_limits(team=alpha, tokens_per_day=5000)
    refused = await call(raw, max_tokens=6000)  # prompt + max_tokens over the budget: refused first
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    response = await call(raw, max_tokens=50)
    assert response.status_code == 200
    reserved = 5000 - int(response["x-ratelimit-remaining-tokens"])
    reply = await Message.objects.filter(role=Message.Role.ASSISTANT).alatest("pk")
    assert reserved == reply.prompt_tokens + 50
    await limits.wait_settled()
    assert await used_by(alpha) == reply.prompt_tokens + reply.completion_tokens > 0


async def test_it_settles_a_streamed_upstream_call_and_sends_the_headers(site, key, alpha) -> None:
    api_key, raw = key
    await set_limits(team=alpha, tokens_per_day=5000)
    response = await call(raw, model="fault-ok", max_tokens=100, stream=True)
    assert response.status_code == 200 and response["x-ratelimit-limit-tokens"] == "5000"
    body = b"".join([part async for part in response.streaming_content])
    assert body.endswith(b"data: [DONE]\n\n")
    await limits.wait_settled()
    reply = await Message.objects.filter(role=Message.Role.ASSISTANT).alatest("pk")
    assert reply.status == Message.Status.COMPLETE
    assert await used_by(alpha) == reply.prompt_tokens + reply.completion_tokens


async def test_it_gives_back_the_reservation_of_a_failed_upstream_call(site, key, alpha) -> None:
    api_key, raw = key
    await set_limits(team=alpha, tokens_per_day=5000)
    failed = await call(raw, model="fault-500")
    assert failed.status_code >= 500
    await limits.wait_settled()
    assert await used_by(alpha) == 0


async def test_it_reserves_a_browser_upstream_reply_on_the_upstream_s_count(site, alice, alpha) -> None:
    chat = await sync_to_async(actions.start_conversation)(
        alice, alpha, visibility="team", max_tokens=40, model_id="fault-ok"
    )
    await set_limits(team=alpha, user=alice, requests_per_minute=1)
    await set_limits(team=alpha, tokens_per_day=5000)
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "first"}))
    await finish_run(chat.pk)
    await limits.wait_settled()
    reply = await Message.objects.filter(conversation=chat, role=Message.Role.ASSISTANT).aget()
    assert reply.params["upstream"] == "faults" and reply.status == Message.Status.COMPLETE
    assert await used_by(alpha) == reply.prompt_tokens + reply.completion_tokens
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "second"}))
    assert await receive_until(communicator, "Limit reached", timeout=30)
    await communicator.disconnect()


async def test_it_estimates_a_browser_upstream_reply_as_the_upstream_path_counts_it(
    site, alice, alpha
) -> None:
    from conversations.api.upstream import token_counter

    chat = await sync_to_async(actions.start_conversation)(
        alice, alpha, visibility="team", max_tokens=40, model_id="fault-ok", system_prompt="Be brief."
    )
    text = "count my words, not the template's"
    prompt = token_counter()(f"Be brief.\n{text}")
    await set_limits(team=alpha, tokens_per_day=prompt + 40)  # exactly the upstream's estimate
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": text}))
    await finish_run(chat.pk)
    await limits.wait_settled()
    reply = await Message.objects.filter(conversation=chat, role=Message.Role.ASSISTANT).aget()
    assert reply.status == Message.Status.COMPLETE and reply.prompt_tokens == prompt
    await communicator.disconnect()
