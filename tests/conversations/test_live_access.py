"""Access follows membership live: an open chat socket whose user loses access to its conversation
is closed (4403) within a second, and gets no frame of the conversation after the change.

Changes: membership removed (the review service, the admin, a queryset delete), logout, password
change, deactivation, the conversation made private or deleted. Through WebsocketCommunicator and
the real ASGI application, on the in-memory channel layer and on a real Redis one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete
from django.test import Client

from chatsite.asgi import application
from conversations import actions
from conversations.models import Conversation, Membership
from review import access
from review import services as review_services
from tests.ws_chat import FIRST_FRAME

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

HEADERS = [(b"host", b"localhost"), (b"origin", b"http://localhost")]
CLOSED = {"type": "websocket.close", "code": 4403}
WITHIN = 1.0  # seconds from the change to the close


@pytest.fixture(params=["memory", "redis"])
def layer(request, settings) -> str:
    """Each test runs on the in-memory layer and on a real Redis server (its own prefix)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": url, "socket_timeout": 15}],
                    "prefix": f"access{uuid.uuid4().hex[:8]}",
                },
            }
        }
    return request.param


@pytest.fixture
def chat(alice, alpha, layer) -> Conversation:
    """A conversation alice shares with her team (bob reads it)."""
    return actions.start_conversation(alice, alpha, visibility="team", title="Shared")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def open_socket(client: Client, conversation_id: int) -> WebsocketCommunicator:
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())
    communicator = WebsocketCommunicator(application, f"/ws/c/{conversation_id}/", headers=[*HEADERS, cookie])
    connected, code = await communicator.connect()
    assert connected, code
    assert 'id="messages"' in await communicator.receive_from(timeout=FIRST_FRAME)  # as it is now
    return communicator


async def socket_of(user, conversation_id: int) -> tuple[Client, WebsocketCommunicator]:
    client = await sync_to_async(logged_in)(user)
    return client, await open_socket(client, conversation_id)


async def receive_until(communicator: WebsocketCommunicator, needle: str) -> None:
    while needle not in await communicator.receive_from(timeout=10):
        pass


async def closed(communicator: WebsocketCommunicator) -> None:
    """The socket's next output is a close with 4403, after at most the notice that says why
    (which carries nothing of the conversation)."""
    output = await communicator.receive_output(timeout=5)
    if output["type"] == "websocket.send":
        assert output["text"].count("<") == 2 and "no longer available" in output["text"], output
        output = await communicator.receive_output(timeout=5)
    assert output == CLOSED, output


async def assert_closed_before(
    communicator: WebsocketCommunicator, witness: WebsocketCommunicator, needle: str, started: float
) -> None:
    """``communicator`` is closed with 4403 within a second of ``started``, with nothing of the
    conversation before the close; once ``witness`` (a socket that kept access) has received
    ``needle``, sent after the change, nothing more comes to ``communicator`` either."""
    await closed(communicator)
    elapsed = time.monotonic() - started
    assert elapsed < WITHIN, f"closed after {elapsed:.2f} s"
    await receive_until(witness, needle)
    assert await communicator.receive_nothing(timeout=0.3)


async def after_change_send(conversation: Conversation, author, text: str) -> None:
    await sync_to_async(actions.add_user_message)(conversation, text, author=author)


# --- Membership removed --------------------------------------------------------------------------


def remove_by_service(team, user, by) -> None:
    review_services.remove_member(Membership.objects.get(team=team, user=user), by=by)


def remove_by_queryset(team, user, by) -> None:
    Membership.objects.filter(team=team, user=user).delete()


def remove_in_the_admin(team, user, by) -> None:
    client = logged_in(get_user_model().objects.get(username="root"))
    membership = Membership.objects.get(team=team, user=user)
    response = client.post(
        "/admin/conversations/membership/",
        {"action": "delete_selected", "_selected_action": [membership.pk], "post": "yes"},
    )
    assert response.status_code == 302, response.status_code
    assert not Membership.objects.filter(pk=membership.pk).exists()


@pytest.fixture
def removed_at() -> Iterator[list[float]]:
    """When memberships were removed: the commit's time (a request through the admin takes a while
    to answer after it)."""
    times: list[float] = []

    def record(**kwargs) -> None:
        transaction.on_commit(lambda: times.append(time.monotonic()))

    post_delete.connect(record, sender=Membership, dispatch_uid="test_live_access.removed_at")
    yield times
    post_delete.disconnect(dispatch_uid="test_live_access.removed_at", sender=Membership)


@pytest.mark.parametrize("remove", [remove_by_service, remove_by_queryset, remove_in_the_admin])
async def test_it_closes_a_removed_members_socket_before_the_next_message(
    alice, bob, alpha, chat, remove, removed_at
) -> None:
    await sync_to_async(get_user_model().objects.create_superuser)("root", password="x")
    _, watcher = await socket_of(alice, chat.pk)
    _, removed = await socket_of(bob, chat.pk)
    await sync_to_async(remove)(alpha, bob, alice)
    await after_change_send(chat, alice, "after bob left")
    assert len(removed_at) == 1
    await assert_closed_before(removed, watcher, "after bob left", removed_at[0])
    await removed.disconnect()
    await watcher.disconnect()


async def test_it_closes_a_removed_members_socket_before_the_next_delta(alice, bob, alpha, chat) -> None:
    """A reply streaming while the member is removed: he gets no delta after the change."""
    _, watcher = await socket_of(alice, chat.pk)
    _, removed = await socket_of(bob, chat.pk)
    (reply,) = await sync_to_async(actions.start_assistant_messages)(chat, 1, params={}, prompt_tokens=1)
    await receive_until(removed, f"m-{reply.pk}")
    await receive_until(watcher, f"m-{reply.pk}")
    layer = get_channel_layer()
    delta = {"type": "chat.delta", "message_id": reply.pk}
    await layer.group_send(actions.group_name(chat.pk), {**delta, "content": "before"})
    await receive_until(removed, "before")
    started = time.monotonic()
    await sync_to_async(remove_by_service)(alpha, bob, alice)
    await layer.group_send(actions.group_name(chat.pk), {**delta, "content": "after the removal"})
    await assert_closed_before(removed, watcher, "after the removal", started)
    await removed.disconnect()
    await watcher.disconnect()


async def test_it_leaves_the_sockets_of_other_members_and_teams_open(
    alice, bob, charlie, alpha, chat
) -> None:
    bravo = await sync_to_async(actions.create_team)("bravo", admin=charlie)
    await sync_to_async(actions.add_member)(bravo, bob)
    _, watcher = await socket_of(alice, chat.pk)
    _, bobs = await socket_of(bob, chat.pk)
    await sync_to_async(remove_by_service)(bravo, bob, charlie)  # another team: alpha is untouched
    await after_change_send(chat, alice, "still here")
    await receive_until(bobs, "still here")
    await receive_until(watcher, "still here")
    await bobs.disconnect()
    await watcher.disconnect()


# --- The session and the account -----------------------------------------------------------------


async def test_it_closes_the_socket_of_a_session_that_logs_out(alice, bob, chat) -> None:
    _, watcher = await socket_of(alice, chat.pk)
    session, leaving = await socket_of(bob, chat.pk)
    _, other_session = await socket_of(bob, chat.pk)  # bob on another device stays
    started = time.monotonic()
    response = await sync_to_async(session.post)("/accounts/logout/")
    assert response.status_code == 302
    await after_change_send(chat, alice, "after the logout")
    await assert_closed_before(leaving, watcher, "after the logout", started)
    await receive_until(other_session, "after the logout")
    await leaving.disconnect()
    await other_session.disconnect()
    await watcher.disconnect()


def change_password(user) -> None:
    user.set_password("a new one")  # what the admin's password form does


def deactivate(user) -> None:
    user.is_active = False


@pytest.mark.parametrize("change", [change_password, deactivate])
async def test_it_closes_every_socket_of_a_user_whose_password_changed_or_who_was_deactivated(
    alice, bob, chat, change
) -> None:
    _, watcher = await socket_of(alice, chat.pk)
    _, first = await socket_of(bob, chat.pk)
    _, second = await socket_of(bob, chat.pk)
    change(bob)  # (hashing a password takes a while: the change is the save)
    started = time.monotonic()
    await sync_to_async(bob.save)()
    await after_change_send(chat, alice, "after the change")
    await assert_closed_before(first, watcher, "after the change", started)
    await closed(second)
    await first.disconnect()
    await second.disconnect()
    await watcher.disconnect()


# --- The conversation ----------------------------------------------------------------------------


@pytest.mark.parametrize("change", [lambda c: actions.set_visibility(c, "private"), actions.soft_delete])
async def test_it_closes_a_teammates_socket_when_the_conversation_is_made_private_or_deleted(
    alice, bob, chat, change
) -> None:
    _, removed = await socket_of(bob, chat.pk)
    started = time.monotonic()
    await sync_to_async(change)(chat)
    await closed(removed)
    assert time.monotonic() - started < WITHIN
    await removed.disconnect()


async def test_it_closes_the_sockets_of_a_conversation_deleted_for_good(alice, bob, chat) -> None:
    _, removed = await socket_of(bob, chat.pk)
    await sync_to_async(Conversation.objects.filter(pk=chat.pk).delete)()
    await closed(removed)
    await removed.disconnect()


@pytest.mark.parametrize(
    "frame",
    [
        {"action": "send", "text": "after the change"},
        {"action": "regenerate"},
        {"action": "retry", "message_id": 1},
        {"action": "edit", "message_id": 1, "text": "after the change"},
    ],
    ids=lambda frame: frame["action"],
)
async def test_an_action_after_a_change_no_signal_announced_closes_the_socket_and_writes_nothing(
    alice, bob, chat, frame
) -> None:
    """A ``QuerySet.update()`` sends no signal: the socket finds out at its next action, which is
    refused before anything is reserved or written (a reply's start checks access in its first
    trip to a thread, conversations/live/replies.py)."""
    await sync_to_async(actions.add_user_message)(chat, "before", author=alice)
    _, removed = await socket_of(bob, chat.pk)
    await sync_to_async(Conversation.objects.filter(pk=chat.pk).update)(visibility="private")
    count = await chat.messages.acount()
    await removed.send_to(text_data=json.dumps(frame))
    await closed(removed)
    assert await chat.messages.acount() == count
    await removed.disconnect()


# --- The team conversations a former member owned ------------------------------------------------


async def test_it_keeps_a_former_members_team_conversations_with_the_team(alice, bob, alpha, layer) -> None:
    """Rule: team conversations stay with the team. A former member loses access to those he owned
    (the team and its reviewers keep them); his private conversations stay his."""
    shared = await sync_to_async(actions.start_conversation)(bob, alpha, visibility="team", title="Bob's")
    private = await sync_to_async(actions.start_conversation)(bob, alpha, title="Bob's own")
    key, raw_key = await sync_to_async(actions.create_api_key)(bob, alpha, "script")
    bobs_client, bobs_socket = await socket_of(bob, shared.pk)
    started = time.monotonic()
    # Removed by a path that revokes nothing itself: the rule must hold in the one access helper.
    await sync_to_async(remove_by_queryset)(alpha, bob, alice)
    await closed(bobs_socket)
    assert time.monotonic() - started < WITHIN
    await bobs_socket.disconnect()

    def pages() -> None:
        assert bobs_client.get(f"/c/{shared.pk}/").status_code == 404
        assert bobs_client.get(f"/c/{private.pk}/").status_code == 200
        alices = logged_in(alice)
        assert alices.get(f"/c/{shared.pk}/").status_code == 200
        alice.is_staff = True  # the door to the review pages; she administers alpha
        alice.save(update_fields=["is_staff"])
        assert access.get_conversation_for_reviewer(alice, shared.pk) == shared
        assert actions.authenticate_api_key(raw_key) is None  # no new calls logged under alpha
        response = bobs_client.post(
            "/v1/chat/completions",
            json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw_key}",
        )
        assert response.status_code == 401

    await sync_to_async(pages)()
    cookie = (b"cookie", f"sessionid={bobs_client.cookies['sessionid'].value}".encode())
    refused = WebsocketCommunicator(application, f"/ws/c/{shared.pk}/", headers=[*HEADERS, cookie])
    assert await refused.connect() == (False, 4404)
    await refused.disconnect()
    kept = await open_socket(bobs_client, private.pk)
    await kept.disconnect()


# --- The check itself ----------------------------------------------------------------------------


def session_of(user) -> str:
    client = logged_in(user)
    return client.cookies["sessionid"].value


@pytest.mark.parametrize("layer", ["memory"], indirect=True)
async def test_the_check_gives_the_conversation_only_to_its_still_logged_in_active_user(
    alice, bob, chat
) -> None:
    """``live_access.check`` in its one query: each condition alone refuses."""
    await sync_to_async(check_each_condition)(alice, bob, chat)


def check_each_condition(alice, bob, chat) -> None:
    from datetime import timedelta

    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from conversations.live_access import Credentials, check, session_digest

    def credentials(user, key: str | None) -> Credentials:
        return Credentials(user.pk, key, session_digest(key), user.get_session_auth_hash())

    bobs = session_of(bob)
    assert check(credentials(bob, bobs), chat.pk) == chat
    assert check(credentials(bob, None), chat.pk) == chat  # a socket without a session
    assert check(credentials(bob, session_of(alice)), chat.pk) is None  # someone else's session
    assert check(credentials(bob, "no-such-session"), chat.pk) is None
    stale = Credentials(bob.pk, bobs, session_digest(bobs), "0" * 64)
    assert check(stale, chat.pk) is None  # the password changed since the socket opened
    private = actions.start_conversation(alice, chat.team)
    assert check(credentials(bob, bobs), private.pk) is None  # not visible to him
    Session.objects.filter(session_key=bobs).update(expire_date=timezone.now() - timedelta(seconds=1))
    assert check(credentials(bob, bobs), chat.pk) is None  # expired
    fresh = session_of(bob)
    get_user_model().objects.filter(pk=bob.pk).update(is_active=False)
    assert check(credentials(bob, fresh), chat.pk) is None  # deactivated


@pytest.mark.parametrize("layer", ["memory"], indirect=True)
async def test_the_check_compiled_once_answers_as_the_rule_for_every_user_conversation_and_session(
    alice, bob, charlie, alpha, chat
) -> None:
    """The check's query is compiled once, with stand-in values, and reused with each check's own:
    every (user, conversation, session) gives what the rule itself says, read afresh with the
    ORM; and the team's models come with it."""
    await sync_to_async(compare_with_the_rule)(alice, bob, charlie, alpha, chat)


def compare_with_the_rule(alice, bob, charlie, alpha, chat) -> None:
    from django.contrib.sessions.models import Session

    from conversations import queries
    from conversations.live_access import Credentials, check, session_digest
    from upstreams.models import TeamModels

    beta = actions.create_team("beta", admin=charlie)
    conversations = [
        chat,  # alice's, shared with alpha
        actions.start_conversation(alice, alpha),  # alice's, private
        actions.start_conversation(bob, alpha, visibility="team"),
        actions.start_conversation(charlie, beta, visibility="team"),
        actions.start_conversation(charlie, beta),
    ]
    gone = actions.start_conversation(bob, alpha, visibility="team")
    actions.soft_delete(gone)
    conversations.append(gone)
    TeamModels.objects.create(team=beta, models=["an-upstream-model"])
    users = [alice, bob, charlie]
    sessions = {user.pk: session_of(user) for user in users}
    inactive = get_user_model().objects.create_user("dora", password="a-long-password-4")
    actions.add_member(alpha, inactive)
    sessions[inactive.pk] = session_of(inactive)
    get_user_model().objects.filter(pk=inactive.pk).update(is_active=False)
    users.append(get_user_model().objects.get(pk=inactive.pk))
    keys = [*sessions.values(), None, "no-such-session"]
    answered = 0
    for user in users:
        for key in keys:
            for conversation in conversations:
                credentials = Credentials(user.pk, key, session_digest(key), user.get_session_auth_hash())
                found = check(credentials, conversation.pk)
                visible = queries.visible_conversations_of(user.pk).filter(pk=conversation.pk).exists()
                session_ok = key is None or (
                    Session.objects.filter(session_key=key).exists()
                    and str(Session.objects.get(session_key=key).get_decoded().get("_auth_user_id"))
                    == str(user.pk)
                )
                expected = user.is_active and visible and session_ok
                assert (found is not None) == expected, (user.username, key, conversation.pk)
                if found is not None:
                    answered += 1
                    assert found.pk == conversation.pk and found.title == conversation.title
                    models = TeamModels.objects.filter(team_id=conversation.team_id).first()
                    assert found.team_models == (None if models is None else models.models)
    # Each active user, with their own session or none, on what they may see: alice her private one
    # and alpha's two live team ones, bob alpha's two, charlie his two.
    assert answered == 2 * (3 + 2 + 2)
