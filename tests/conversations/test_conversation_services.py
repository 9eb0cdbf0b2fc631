"""The conversation services: access (404 for forbidden and missing alike), logging an API call,
finishing a reply with a broadcast after commit, and interrupting stale replies."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import Http404
from django.utils import timezone

from conversations import actions, queries
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(alice, alpha) -> Conversation:
    conversation = actions.start_conversation(alice, alpha, title="Alice's chat")
    actions.add_user_message(conversation, "hello")
    return conversation


def test_it_shows_alice_her_conversation_and_hides_it_from_others(alice, bob, charlie, chat) -> None:
    assert queries.get_conversation_for_user(alice, chat.pk) == chat
    for other in (bob, charlie):  # private: even her teammate gets the same 404 as a missing id
        with pytest.raises(Http404):
            queries.get_conversation_for_user(other, chat.pk)
    with pytest.raises(Http404):
        queries.get_conversation_for_user(alice, chat.pk + 1000)


def test_it_shares_a_team_conversation_with_the_team_only(alice, bob, charlie, chat) -> None:
    chat.visibility = Conversation.Visibility.TEAM
    chat.save(update_fields=["visibility"])
    assert queries.get_conversation_for_user(bob, chat.pk) == chat
    with pytest.raises(Http404):
        queries.get_conversation_for_user(charlie, chat.pk)
    message = chat.messages.get()
    assert queries.get_message_for_user(bob, message.pk) == message
    with pytest.raises(Http404):
        queries.get_message_for_user(charlie, message.pk)


def test_it_hides_a_deleted_conversation_from_its_owner(alice, chat) -> None:
    chat.deleted_at = timezone.now()
    chat.save(update_fields=["deleted_at"])
    with pytest.raises(Http404):
        queries.get_conversation_for_user(alice, chat.pk)
    assert Conversation.objects.filter(pk=chat.pk).exists()  # kept for reviewers


def test_it_lists_visible_conversations_in_one_query(alice, alpha, django_assert_num_queries) -> None:
    for i in range(5):
        actions.start_conversation(alice, alpha, title=f"chat {i}")
    with django_assert_num_queries(1):
        titles = [c.title for c in queries.visible_conversations(alice).select_related("team")]
    assert len(titles) == 5


def test_it_logs_an_api_call(alice, alpha) -> None:
    key, _ = actions.create_api_key(alice, alpha, "script")
    call = actions.start_api_call(
        key,
        model_id="tiny",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What  is\nup?"}],
        params={"temperature": 0.5, "max_tokens": 9, "n": 2},
        n=2,
        prompt_tokens=17,
        request_user="end-user-1",
    )
    conversation = call.conversation
    assert (conversation.source, conversation.team, conversation.owner) == ("api", alpha, alice)
    assert conversation.api_key == key and conversation.request_user == "end-user-1"
    assert (
        conversation.title == "What is up?"
        and conversation.temperature == 0.5
        and conversation.max_tokens == 9
    )
    assert [m.role for m in conversation.messages.all()] == ["system", "user", "assistant", "assistant"]
    assert [r.choice_index for r in call.replies] == [0, 1]
    for reply in call.replies:
        reply.refresh_from_db()
        assert reply.status == "streaming" and reply.prompt_tokens == 17
        assert reply.owner_process == actions.OWNER_PROCESS and reply.heartbeat_at is not None
    key.refresh_from_db()
    assert key.last_used_at is None  # written at the call's end (conversations/api/http.note_key_use)


def test_a_new_replys_fragment_is_rendered_once_for_every_viewer(
    alice, bob, chat, django_capture_on_commit_callbacks
) -> None:
    """The chat.message of a new streaming reply carries its HTML, which is what every viewer's
    consumer would render from the row (the consumers forward it instead, while the slot prefills);
    a regenerated one (versions to page through) is rendered by each consumer."""
    from conversations.fragments import message_html

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(actions.group_name(chat.pk), channel)
    with django_capture_on_commit_callbacks(execute=True):
        (reply,) = actions.start_assistant_messages(chat, 1, params={"model": "m-1"}, prompt_tokens=5)
    event = async_to_sync(layer.receive)(channel)
    assert event["type"] == "chat.message" and event["message_id"] == reply.pk
    stored = Message.objects.select_related("author").get(pk=reply.pk)
    assert event["html"] == message_html(stored, chat, alice) == message_html(stored, chat, bob)
    assert "m-1" in event["html"] and "writing…" in event["html"]
    actions.finish_assistant_message(
        reply.pk, actions.Outcome(status="complete", content="Hi", finish_reason="stop")
    )
    with django_capture_on_commit_callbacks(execute=True):
        actions.start_assistant_messages(chat, 1, params={}, prompt_tokens=5, version_of=reply.pk)
    event = async_to_sync(layer.receive)(channel)
    assert event["type"] == "chat.message" and "html" not in event


def test_it_finishes_a_reply_and_broadcasts_after_commit(
    alice, chat, django_capture_on_commit_callbacks
) -> None:
    (reply,) = actions.start_assistant_messages(chat, 1, params={}, prompt_tokens=5)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(actions.group_name(chat.pk), channel)
    actions.checkpoint_assistant_message(reply.pk, "Hel")
    reply.refresh_from_db()
    assert reply.content == "Hel" and reply.status == "streaming"
    outcome = actions.Outcome(
        status="complete",
        content="Hello",
        finish_reason="stop",
        token_ids=[1, 2],
        prompt_tokens=5,
        completion_tokens=2,
        queue_wait=0.1,
        ttft=0.2,
        duration=0.3,
    )
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        actions.finish_assistant_message(reply.pk, outcome)
    assert len(callbacks) == 1
    event = async_to_sync(layer.receive)(channel)
    assert event == {
        "type": "chat.finished",
        "message_id": reply.pk,
        "choice_index": 0,
        "status": "complete",
        "finish_reason": "stop",
    }
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.token_ids, reply.completion_tokens) == (
        "complete",
        "Hello",
        [1, 2],
        2,
    )
    # A checkpoint arriving late never overwrites a finished reply.
    actions.checkpoint_assistant_message(reply.pk, "Hel")
    reply.refresh_from_db()
    assert reply.content == "Hello"


def test_it_marks_an_unanswered_message(chat) -> None:
    message = actions.add_user_message(chat, "are you there?")
    actions.mark_unanswered(message)
    message.refresh_from_db()
    assert message.status == Message.Status.UNANSWERED


def test_it_interrupts_only_stale_replies(chat) -> None:
    stale, live = actions.start_assistant_messages(chat, 2, params={}, prompt_tokens=3)
    Message.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert actions.interrupt_stale_messages(timezone.now() - timedelta(seconds=30)) == 1
    stale.refresh_from_db()
    live.refresh_from_db()
    assert stale.status == "interrupted" and live.status == "streaming"


def test_logging_an_api_call_broadcasts_nothing(alice, alpha, django_capture_on_commit_callbacks) -> None:
    """Its conversation is new: no page can be open on it yet, so there is nobody to tell."""
    key, _ = actions.create_api_key(alice, alpha)
    with django_capture_on_commit_callbacks() as callbacks:
        actions.start_api_call(
            key, model_id="m", messages=[{"role": "user", "content": "hi"}], params={}, n=2, prompt_tokens=5
        )
    assert callbacks == []


def test_it_logs_an_api_call_in_a_fixed_number_of_queries(alice, alpha, django_assert_num_queries) -> None:
    key, _ = actions.create_api_key(alice, alpha)
    messages = [{"role": "user", "content": f"question {i}"} for i in range(10)]
    # The conversation, the request's messages in one insert, one insert per reply, and no
    # savepoint (the caller's transaction holds them; the key's use is written at the call's end):
    # the same for 10 messages as for 1.
    with django_assert_num_queries(4):
        actions.start_api_call(key, model_id="m", messages=messages, params={}, n=2, prompt_tokens=5)
