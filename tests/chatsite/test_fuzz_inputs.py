"""Property-based: random text (surrogates, NULs, huge strings), numbers (huge, negative, floats,
NaN as text) and nesting, thrown at every form, review filter, websocket frame type and /v1 field,
never get a 5xx; a websocket is never closed with 1011; and bad input changes no stored message.

Bounded: ``CHAT_FUZZ_EXAMPLES`` examples per target (default 40), no deadline, derandomized (the
same examples on every run; raise the count for a longer hunt). The pages go through the Django
test client on the configured database (SQLite or PostgreSQL), the websocket through
WebsocketCommunicator with a tiny random model, /v1 through the tiny-model live server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from django.db import transaction
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from conversations import actions
from conversations.models import Message
from teams import services as team_services
from tests.review_data import World, logged_in

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "40"))
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure names its input anyway
    suppress_health_check=list(HealthCheck),
)

# --- Strategies ------------------------------------------------------------------------------------

EDGES = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "x\udc80y", "\ufeff", "\u202e", "\u00b2", "\u0661",
    "-1", "0", "-0", "9223372036854775807", "9223372036854775808", "99999999999999999999", "9" * 5000,
    "1e309", "-1e309", "1.5", "NaN", "nan", "inf", "-Infinity", "0x10", "1_000", " 7 ",
    "9999-12-31", "0001-01-01", "10000-01-01", "2024-02-30", "2024-13-01", "0000-00-00",
    "<script>alert(1)</script>", "' OR 1=1 --", "%00", "\\", "../../etc/passwd", "x" * 100_000,
]  # fmt: skip
KNOWN_EDGES = [
    "a\x00b",
    "\ud800",
    "99999999999999999999",
    "\u00b2",
    "9999-12-31",
    "0001-01-01",
    "x" * 100_000,
]
surrogate = st.integers(0xD800, 0xDFFF).map(chr)
char = st.one_of(st.characters(), surrogate, st.just("\x00"))
numbers_as_text = st.one_of(
    st.integers().map(str),
    st.integers(min_value=2**60).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
text = st.one_of(st.sampled_from(EDGES), st.dates().map(str), numbers_as_text, st.text(char, max_size=40))
number = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2),
    st.integers(max_value=-(2**63)),
    st.floats(),
    st.booleans(),
)
scalar = st.one_of(st.none(), number, text)
json_value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


deep = st.sampled_from([nested(50), nested(500), nested(990)])
any_json = st.one_of(json_value, deep)


def form_bytes(data: dict[str, str]) -> str:
    """Encode as a browser would send what was typed: surrogates as their (invalid) UTF-8 bytes."""
    raw = {k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass") for k, v in data.items()}
    return urlencode(raw)


# --- Pages: forms, search, review filters, usage ---------------------------------------------------

Target = tuple[str, str, Callable[[World], str], list[str]]  # (who, method, url, fields)

LIST_FILTERS = ["team", "owner", "api_key", "source", "model", "status", "flagged", "deleted", "visibility"]
LIST_PARAMS = [*LIST_FILTERS, "created__gte", "created__lt", "q", "o", "p", "all", "_changelist_filters"]


def chat_url(name: str) -> Callable[[World], str]:
    return lambda w: reverse(name, args=[w.conversations["alice_chat"].pk])


TARGETS: dict[str, Target] = {
    "rename": ("alice", "POST", chat_url("chat:rename"), ["title"]),
    "sharing": ("alice", "POST", chat_url("chat:sharing"), ["visibility"]),
    "settings": ("alice", "POST", chat_url("chat:settings"), ["system_prompt", "temperature", "max_tokens"]),
    "delete": ("alice", "POST", chat_url("chat:delete"), ["confirm"]),
    "conversation": ("alice", "GET", chat_url("chat:conversation"), ["q"]),
    "switch team": ("alice", "POST", lambda w: reverse("chat:switch_team"), ["team"]),
    "new chat": ("alice", "POST", lambda w: reverse("chat:create"), ["team"]),
    "new chat from a message": ("bob", "GET", lambda w: reverse("chat:create"), ["from"]),
    "new key": ("alice", "POST", lambda w: reverse("chat:api_keys"), ["team", "name"]),
    "home search": ("bob", "GET", lambda w: reverse("chat:home"), ["q"]),
    "list search": ("bob", "GET", lambda w: reverse("chat:list"), ["q"]),
    "login": ("anonymous", "POST", lambda w: reverse("login"), ["username", "password", "next"]),
    "password change": (
        "bob",
        "POST",
        lambda w: reverse("password_change"),
        ["old_password", "new_password1", "new_password2"],
    ),
    "review list (root)": (
        "root",
        "GET",
        lambda w: reverse("admin:conversations_conversation_changelist"),
        LIST_PARAMS,
    ),
    "review list (team admin)": (
        "alice",
        "GET",
        lambda w: reverse("admin:conversations_conversation_changelist"),
        LIST_PARAMS,
    ),
    "review export": (
        "alice",
        "GET",
        lambda w: reverse("admin:conversations_conversation_export", args=["csv"]),
        LIST_PARAMS,
    ),
    "transcript": (
        "root",
        "GET",
        lambda w: reverse("admin:conversations_conversation_change", args=[w.conversations["bob_api"].pk]),
        ["_changelist_filters"],
    ),
    "flag": (
        "root",
        "POST",
        lambda w: reverse("admin:conversations_conversation_flag", args=[w.conversations["bob_api"].pk]),
        ["note", "action"],
    ),
    "members": (
        "alice",
        "GET",
        lambda w: reverse("admin:conversations_membership_changelist"),
        ["team", "role", "q", "o", "p"],
    ),
    "add member": (
        "alice",
        "POST",
        lambda w: reverse("admin:conversations_membership_add"),
        ["team", "username", "role"],
    ),
    "teams": ("root", "GET", lambda w: reverse("admin:conversations_team_changelist"), ["q", "o"]),
    "add team": (
        "root",
        "POST",
        lambda w: reverse("admin:conversations_team_add"),
        ["name", "reviewers_see_private"],
    ),
    "audit": (
        "root",
        "GET",
        lambda w: reverse("admin:review_auditentry_changelist"),
        ["action", "actor", "team__id__exact", "created__gte", "q"],
    ),
    "add limit": (
        "alice",
        "POST",
        lambda w: reverse("admin:review_limit_add"),
        ["team", "user", "api_key", "requests_per_minute", "tokens_per_day"],
    ),
    "add retention": (
        "alice",
        "POST",
        lambda w: reverse("admin:review_retentionpolicy_add"),
        ["team", "keep_days", "deleted_keep_days"],
    ),
    "add hold": (
        "alice",
        "POST",
        lambda w: reverse("admin:review_legalhold_add"),
        ["team", "conversation", "reason"],
    ),
    "audit export": (
        "alice",
        "GET",
        lambda w: reverse("admin:review_audit_export"),
        ["action__exact", "actor", "team", "created__gte", "q"],
    ),
    "team invite": (
        "alice",
        "POST",
        lambda w: reverse("teams:create_invite", args=[w.alpha.pk]),
        ["role", "email"],
    ),
    "team role": (
        "alice",
        "POST",
        lambda w: reverse("teams:set_role", args=[w.alpha.pk, w.alpha.memberships.get(user=w.bob).pk]),
        ["role"],
    ),
    "invite accept": (
        "anonymous",
        "POST",
        lambda w: team_services.invite_path(team_services.create_invite(w.alpha, by=w.alice)[1]),
        ["username", "password1", "password2"],
    ),
    "usage": ("alice", "GET", lambda w: reverse("review:usage"), ["start", "end", "team"]),
    "usage csv": ("root", "GET", lambda w: reverse("review:usage_csv"), ["start", "end", "team"]),
}


def snapshot() -> list[tuple[int, str, str]]:
    return list(Message.objects.order_by("pk").values_list("pk", "content", "status"))


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_it_never_answers_5xx_to_a_form_or_filter(world: World, target: Target) -> None:
    who, method, url_of, fields = target
    world.conversations["alice_chat"] = actions.start_conversation(world.alice, world.alpha, source="web")
    client = Client() if who == "anonymous" else logged_in(getattr(world, who))
    url = url_of(world)
    before = snapshot()

    @BOUNDED
    @given(data=st.dictionaries(st.sampled_from(fields), text, max_size=3))
    @example(data={})
    def check(data: dict[str, str]) -> None:
        # Each example in a savepoint rolled back: every one starts from the same data.
        with transaction.atomic():
            if method == "GET":
                response = client.get(f"{url}?{form_bytes(data)}")
            else:
                response = client.post(
                    url, form_bytes(data), content_type="application/x-www-form-urlencoded"
                )
            assert response.status_code < 500, (data, response.content[:300])
            if response.streaming:
                b"".join(response.streaming_content)
            transaction.set_rollback(True)

    for value in KNOWN_EDGES:  # every field at once at each edge found so far, then random ones
        check = example(data=dict.fromkeys(fields, value))(check)
    check()
    assert snapshot() == before


ID_ROUTES = [
    ("alice", "chat:conversation"),
    ("alice", "chat:export_json"),
    ("alice", "chat:revoke_key"),
    ("alice", "review:team_policy"),
    ("alice", "teams:team"),
]


@pytest.mark.parametrize(("who", "name"), ID_ROUTES, ids=[n for _, n in ID_ROUTES])
def test_it_never_answers_5xx_to_an_id_in_the_path(world: World, who: str, name: str) -> None:
    client = logged_in(getattr(world, who))

    @BOUNDED
    @given(pk=st.one_of(st.integers(min_value=0), st.integers(min_value=2**62)))
    def check(pk: int) -> None:
        with transaction.atomic():
            method = client.post if name == "chat:revoke_key" else client.get
            assert method(reverse(name, args=[pk])).status_code < 500
            transaction.set_rollback(True)

    check()


# --- The chat websocket ----------------------------------------------------------------------------


ACTIONS = ["send", "stop", "regenerate", "retry", "edit"]
frame_fields = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(ACTIONS), scalar)},
    optional={"text": any_json, "message_id": any_json, "HEADERS": any_json},
)
frames = st.one_of(
    frame_fields.map(json.dumps),
    any_json.map(json.dumps),
    deep.map(lambda d: json.dumps({"action": "send", "text": d})),
    st.sampled_from([" ", "{", "[" * 30_000 + "]" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000]),
    text,
).filter(bool)  # the communicator cannot send an empty frame


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@BOUNDED
@given(frame=frames)
@example(frame=json.dumps({"action": "send", "text": "hello"}))  # a reply runs while the rest arrive
@example(frame=json.dumps({"action": "regenerate"}))
@example(frame=json.dumps({"action": "send", "text": "\ud800"}))
async def test_it_never_closes_the_socket_with_1011_for_a_frame(fuzz_socket, frame: str) -> None:
    communicator, kept = fuzz_socket
    await communicator.send_to(text_data=frame)
    while True:  # every frame the page sends is answered by the error line (empty when it went well)
        output = await communicator.receive_output(timeout=10)
        assert output["type"] == "websocket.send", (frame[:300], output)
        if 'id="chat-error"' in output.get("text", ""):
            break
    after = await sync_to_async(
        lambda: dict(Message.objects.filter(pk__in=kept).values_list("pk", "content"))
    )()
    assert after == kept  # bad input changed no stored message


@pytest_asyncio.fixture
async def fuzz_socket(alice, alpha, settings):
    """One socket on alice's conversation, with the tiny model serving (replies capped at 4 tokens)."""
    import tempfile
    from pathlib import Path

    from inference.model import ChatModel
    from tests.chat_runtime import serving
    from tests.tiny_gguf import write_tiny_llama
    from tests.ws_chat import connect

    settings.CHAT_MAX_TOKENS_CAP = 4
    folder = Path(tempfile.mkdtemp(prefix="fuzz-ws-"))
    model = ChatModel.load(
        write_tiny_llama(folder / "tiny.gguf", context_length=4096),
        cache_dir=folder / "cache",
        slots=1,
        threads=1,
        queue_max=4,
    )
    chat = await sync_to_async(actions.start_conversation)(alice, alpha, visibility="team", max_tokens=4)
    first = await sync_to_async(actions.add_user_message)(chat, "kept as it was", author=alice)
    with serving(model):
        communicator, connected, _ = await connect(alice, chat.pk)
        assert connected
        yield communicator, {first.pk: first.content}
        await communicator.disconnect()
    model.close()


# --- /v1 -------------------------------------------------------------------------------------------

V1_FIELDS = [
    "model", "messages", "temperature", "top_p", "n", "stream", "stream_options", "stop", "max_tokens",
    "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "user", "seed",
    "metadata", "store", "service_tier", "parallel_tool_calls", "response_format", "logprobs",
    "top_logprobs", "tools", "tool_choice", "functions", "function_call", "an_unknown_field",
]  # fmt: skip
MESSAGE_FIELDS = ["role", "content", "name", "an_unknown_field"]


def valid_body() -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


v1_bodies = st.one_of(
    st.tuples(st.sampled_from(V1_FIELDS), any_json).map(lambda fv: {**valid_body(), fv[0]: fv[1]}),
    st.tuples(st.sampled_from(MESSAGE_FIELDS), any_json).map(
        lambda fv: {**valid_body(), "messages": [{"role": "user", "content": "hi", fv[0]: fv[1]}]}
    ),
    st.tuples(st.sampled_from(["text", "type"]), any_json).map(
        lambda fv: {
            **valid_body(),
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a", fv[0]: fv[1]}]}],
        }
    ),
    any_json,
)


def test_it_never_answers_5xx_to_a_v1_field(tiny_api_server) -> None:
    @BOUNDED
    @given(body=v1_bodies)
    def check(body: Any) -> None:
        raw = json.dumps(body).encode()  # \\ud800 escapes for lone surrogates, as any client sends them
        status, headers, answer = tiny_api_server.request("POST", "/v1/chat/completions", raw)
        assert status < 500, (raw[:300], answer[:300])
        assert headers["Content-Type"].startswith(("application/json", "text/event-stream")), answer[:300]

    check()
