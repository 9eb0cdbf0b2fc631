"""Quotas and rate limits (review/limits.py) on /v1 and the browser chat, in process: the real ASGI
application, the database's counters, a tiny random model."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from conversations import actions
from conversations.models import Conversation, Message
from review import limits
from review.models import AuditEntry
from tests.chat_runtime import serving, tiny_chat_model
from tests.ws_chat import connect, finish_run, messages_of, receive_until

# A minute that ends mid-test would reset the per-minute counts the tests rely on.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio,
    pytest.mark.usefixtures("limits_clock"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with tiny_chat_model(tmp_path_factory.mktemp("tiny-limits"), context_length=2048, queue_max=8) as model:
        yield model


@pytest.fixture
def runtime(tiny_model):
    with serving(tiny_model) as rt:
        yield rt


@pytest.fixture
def key(alice, alpha):
    return actions.create_api_key(alice, alpha, "limited")


async def call(raw: str, max_tokens: int = 4, **extra):
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }
    body.update(extra)
    return await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )


async def api_calls() -> int:
    return await Conversation.objects.filter(source=Conversation.Source.API).acount()


def set_limits(**kwargs):
    return sync_to_async(limits.set_limits)(by=None, **kwargs)


async def test_it_answers_429_over_the_requests_per_minute_with_openai_s_error(runtime, key) -> None:
    api_key, raw = key
    await set_limits(api_key=api_key, requests_per_minute=2)
    first, second = await call(raw), await call(raw)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert (first["x-ratelimit-remaining-requests"], second["x-ratelimit-remaining-requests"]) == ("1", "0")
    assert first["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" not in first  # no token limit applies
    before = await api_calls()
    refused = await call(raw)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert f"API key {api_key.prefix}" in error["message"] and "limit 2" in error["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert await api_calls() == before  # nothing written for the refused call


async def test_it_refuses_a_call_whose_prompt_and_max_tokens_exceed_the_token_budget(
    runtime, key, alpha
) -> None:
    api_key, raw = key
    await set_limits(team=alpha, tokens_per_day=200)
    refused = await call(raw, max_tokens=300)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "team alpha" in refused.json()["error"]["message"]
    assert refused["x-ratelimit-limit-tokens"] == "200"
    ok = await call(raw, max_tokens=8)
    assert ok.status_code == 200
    assert ok["x-ratelimit-limit-tokens"] == "200"
    assert int(ok["x-ratelimit-remaining-tokens"]) <= 200 - 8
    assert ok["x-ratelimit-reset-tokens"].endswith("s")


async def test_it_settles_the_reservation_with_the_real_usage(runtime, key, alpha) -> None:
    api_key, raw = key
    await set_limits(team=alpha, tokens_per_day=5000)
    response = await call(raw, max_tokens=50, temperature=0)
    usage = response.json()["usage"]
    assert int(response["x-ratelimit-remaining-tokens"]) == 5000 - usage["prompt_tokens"] - 50  # reserved
    await limits.wait_settled()
    (rule,) = limits.rules_for(await sync_to_async(limits.limits_for)(alpha.pk, None), limits.time.time())
    (used,) = await sync_to_async(limits.read_used)([rule])
    assert used == usage["total_tokens"]  # the unused part of max_tokens was given back


async def test_it_lets_the_strictest_limit_decide(runtime, key, alice, alpha) -> None:
    api_key, raw = key
    await set_limits(team=alpha, requests_per_minute=10)
    await set_limits(team=alpha, user=alice, requests_per_minute=1)
    assert (await call(raw)).status_code == 200
    refused = await call(raw)
    assert refused.status_code == 429
    assert "alice in alpha" in refused.json()["error"]["message"]


async def test_it_sends_no_rate_limit_headers_when_no_limit_applies(runtime, key, bob, alpha) -> None:
    api_key, raw = key
    await set_limits(team=alpha, user=bob, requests_per_minute=1)  # bob's, not alice's
    response = await call(raw)
    assert response.status_code == 200
    assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]


@pytest.fixture
def limits_read(monkeypatch) -> list[tuple]:
    """The arguments of each ``limits_for`` call (the real one runs)."""
    read: list[tuple] = []
    real = limits.limits_for
    monkeypatch.setattr(limits, "limits_for", lambda *args: (read.append(args), real(*args))[1])
    return read


async def test_a_call_reads_the_limits_only_when_the_key_check_found_one_that_applies(
    runtime, key, alpha, limits_read
) -> None:
    """The key check says whether any limit applies to the key's calls; a call of a key with none
    (most keys) reads no limits: that query was ~1 ms of PostgreSQL on the way to the first token."""
    api_key, raw = key
    read = limits_read
    response = await call(raw)
    assert response.status_code == 200, response.content
    assert read == [] and not [h for h in response.headers if h.lower().startswith("x-ratelimit")]
    await set_limits(team=alpha, requests_per_minute=2)  # counted from today's log: 1 used
    response = await call(raw)
    assert response.status_code == 200 and response["x-ratelimit-limit-requests"] == "2"
    assert read == [(alpha.pk, api_key.user_id, api_key.pk)]
    assert (await call(raw)).status_code == 429  # the limit holds, read again
    assert len(read) == 2


def one_limit_at_a_time(
    scopes: dict[str, dict | None], said: Callable[[], bool], found: Callable[[], bool]
) -> list[tuple[str, bool, bool]]:
    """(scope, what a check ``said``, whether ``limits_for`` ``found`` a limit) for each scope's
    limit alone (None: no limit at all)."""
    from review.models import Limit

    seen = []
    for scope, fields in scopes.items():
        Limit.objects.all().delete()
        if fields is not None:
            Limit.objects.create(requests_per_minute=5, **fields)
        seen.append((scope, said(), found()))
    return seen


def key_check_for_each_scope(alice, bob, alpha, bravo) -> list[tuple[str, bool, bool]]:
    key, raw = actions.create_api_key(alice, alpha, "scoped")
    other_key, _ = actions.create_api_key(alice, alpha, "other")
    scopes = {
        "none": None,
        "the key's team": {"team": alpha},
        "another team": {"team": bravo},
        "the key's user": {"user": alice},
        "another user": {"user": bob},
        "the user in the key's team": {"team": alpha, "user": alice},
        "another member of the team": {"team": alpha, "user": bob},
        "the user in another team": {"team": bravo, "user": alice},
        "the key": {"api_key": key},
        "another key of the user": {"api_key": other_key},
    }
    return one_limit_at_a_time(
        scopes,
        lambda: actions.authenticate_api_key(raw).limits_apply,  # type: ignore[union-attr]
        lambda: bool(limits.limits_for(alpha.pk, alice.pk, key.pk)),
    )


async def test_the_key_check_finds_a_limit_exactly_when_limits_for_does(alice, bob, alpha, bravo) -> None:
    seen = await sync_to_async(key_check_for_each_scope)(alice, bob, alpha, bravo)
    applies = {"the key's team", "the key's user", "the user in the key's team", "the key"}
    assert seen == [(scope, scope in applies, scope in applies) for scope, _, _ in seen]


async def test_a_browser_reply_reads_the_limits_only_when_the_access_check_found_one_that_applies(
    runtime, alice, alpha, limits_read
) -> None:
    """The socket's access check (live_access.check) says whether any limit applies to the user's
    replies in the conversation's team; a reply with none reads no limits (~0.5 ms of PostgreSQL)."""
    chat = await sync_to_async(actions.start_conversation)(alice, alpha, max_tokens=4)
    read = limits_read
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "first"}))
    await finish_run(chat.pk)
    assert read == []
    await set_limits(team=alpha, user=alice, tokens_per_day=100_000)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "second"}))
    await finish_run(chat.pk, answers=2)
    assert read == [(alpha.pk, alice.pk)]
    await limits.wait_settled()
    (rule,) = limits.rules_for(await sync_to_async(limits.limits_for)(alpha.pk, alice.pk), limits.time.time())
    assert (await sync_to_async(limits.read_used)([rule]))[0] > 0  # the second reply was counted
    await communicator.disconnect()


def access_check_for_each_scope(alice, bob, alpha, bravo) -> list[tuple[str, bool, bool]]:
    """For a conversation of alice's in alpha, as its socket's access check reads it."""
    from conversations.live_access import Credentials, check

    chat = actions.start_conversation(alice, alpha)
    key, _ = actions.create_api_key(alice, alpha, "not for the browser")
    credentials = Credentials(alice.pk, None, "", alice.get_session_auth_hash())
    scopes = {
        "none": None,
        "the conversation's team": {"team": alpha},
        "another team": {"team": bravo},
        "the user": {"user": alice},
        "another user": {"user": bob},
        "the user in the conversation's team": {"team": alpha, "user": alice},
        "another member of the team": {"team": alpha, "user": bob},
        "the user in another team": {"team": bravo, "user": alice},
        "an API key of the user": {"api_key": key},
    }
    return one_limit_at_a_time(
        scopes,
        lambda: check(credentials, chat.pk).limits_apply,  # type: ignore[union-attr]
        lambda: bool(limits.limits_for(alpha.pk, alice.pk)),
    )


async def test_the_access_check_finds_a_limit_exactly_when_limits_for_does(alice, bob, alpha, bravo) -> None:
    seen = await sync_to_async(access_check_for_each_scope)(alice, bob, alpha, bravo)
    applies = {"the conversation's team", "the user", "the user in the conversation's team"}
    assert seen == [(scope, scope in applies, scope in applies) for scope, _, _ in seen]


async def test_it_refuses_a_browser_message_before_writing_and_keeps_the_text(runtime, alice, alpha) -> None:
    chat = await sync_to_async(actions.start_conversation)(alice, alpha, max_tokens=6)
    await set_limits(team=alpha, user=alice, requests_per_minute=1)
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "first"}))
    await finish_run(chat.pk)
    await limits.wait_settled()
    before = len(await messages_of(chat.pk))
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "second, kept"}))
    frames = await receive_until(communicator, "Limit reached")
    refusal = frames[-1]
    assert "alice in alpha" in refusal and "requests per minute" in refusal and "resets in" in refusal
    assert 'id="composer-text"' in refusal and "second, kept</textarea>" in refusal
    assert len(await messages_of(chat.pk)) == before  # nothing written
    await communicator.disconnect()


async def test_it_counts_a_browser_reply_s_tokens_and_gives_back_the_rest(runtime, alice, alpha) -> None:
    chat = await sync_to_async(actions.start_conversation)(alice, alpha, max_tokens=6)
    await set_limits(team=alpha, tokens_per_day=100_000)
    communicator, connected, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "count me"}))
    await finish_run(chat.pk)
    await limits.wait_settled()
    reply = await Message.objects.filter(conversation=chat, role=Message.Role.ASSISTANT).aget()
    (rule,) = limits.rules_for(await sync_to_async(limits.limits_for)(alpha.pk, None), limits.time.time())
    assert (await sync_to_async(limits.read_used)([rule])) == [reply.prompt_tokens + reply.completion_tokens]
    await communicator.disconnect()


async def test_it_audits_limit_changes_and_seeds_from_today_s_log(runtime, key, alpha) -> None:
    api_key, raw = key
    assert (await call(raw, max_tokens=4)).status_code == 200  # before any limit: logged, not counted
    await set_limits(team=alpha, tokens_per_day=10_000)
    (rule,) = limits.rules_for(await sync_to_async(limits.limits_for)(alpha.pk, None), limits.time.time())
    (used,) = await sync_to_async(limits.read_used)([rule])
    call_row = await Message.objects.filter(conversation__api_key=api_key, role="assistant").aget()
    assert used == call_row.prompt_tokens + call_row.completion_tokens
    entry = await AuditEntry.objects.filter(action=AuditEntry.Action.LIMITS).aget()
    assert entry.team_id == alpha.pk and "tokens_per_day: None -> 10000" in entry.detail


async def test_it_refuses_with_503_when_the_counters_cannot_be_reached(runtime, key, alpha, settings) -> None:
    from review import limit_counters

    api_key, raw = key
    await set_limits(team=alpha, requests_per_minute=5)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"prefix": "down"}}
    }
    limit_counters.counters.cache_clear()
    try:
        before = await api_calls()
        response = await call(raw)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limits_unavailable" and response["Retry-After"]
        assert await api_calls() == before
    finally:
        limit_counters.counters.cache_clear()
