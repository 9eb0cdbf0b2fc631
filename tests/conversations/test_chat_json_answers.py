"""The browser chat's "Answer as JSON" setting: the schema is checked when saved, and the replies
of such a conversation are generated under the grammar (the tiny model here; the real one in the
end-to-end check)."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from conversations import actions
from conversations.models import Conversation, Message
from tests.ws_chat import connect, finish_run

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["color", "size"],
    "additionalProperties": False,
}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def chat(alice, alpha) -> Conversation:
    return actions.start_conversation(alice, alpha)


@pytest.mark.django_db
def test_it_saves_answer_as_json_with_a_valid_schema(alice, chat) -> None:
    response = client_for(alice).post(
        f"/c/{chat.pk}/settings", {"json_answers": "on", "json_schema": json.dumps(SCHEMA)}, follow=True
    )
    assert "Settings saved" in response.content.decode()
    chat.refresh_from_db()
    assert chat.json_answers is True and chat.json_schema == SCHEMA
    page = client_for(alice).get(f"/c/{chat.pk}/").content.decode()
    assert 'name="json_answers"' in page and "&quot;color&quot;" in page  # shown back in the form


@pytest.mark.django_db
def test_it_saves_answer_as_json_without_a_schema(alice, chat) -> None:
    client_for(alice).post(f"/c/{chat.pk}/settings", {"json_answers": "on", "json_schema": "  "})
    chat.refresh_from_db()
    assert chat.json_answers is True and chat.json_schema is None


BAD_SCHEMAS = {
    "not json": ('{"type": "object",', "not valid JSON"),
    "not an object": ("[1, 2]", "must be a JSON object"),
    "unknown type": ('{"type": "objekt"}', "objekt"),
    "unsatisfiable bounds": ('{"type": "integer", "minimum": 5, "maximum": 1}', "schema cannot be used"),
}


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "reason"), BAD_SCHEMAS.values(), ids=BAD_SCHEMAS.keys())
def test_it_refuses_an_invalid_schema_with_its_reason(alice, chat, text, reason) -> None:
    response = client_for(alice).post(
        f"/c/{chat.pk}/settings",
        {"json_answers": "on", "json_schema": text, "system_prompt": "kept?"},
        follow=True,
    )
    body = response.content.decode()
    assert "Settings not saved" in body and "json_schema" in body
    assert reason.replace('"', "&quot;") in body
    chat.refresh_from_db()
    assert chat.json_answers is False and chat.json_schema is None and chat.system_prompt == ""


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_answers_with_schema_valid_json_in_the_chat(alice, alpha, runtime) -> None:
    chat = await sync_to_async(actions.start_conversation)(
        alice, alpha, max_tokens=96, temperature=1.0, json_answers=True, json_schema=SCHEMA
    )
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "A colour and a size?"}))
    await finish_run(chat.pk)
    await communicator.disconnect()
    (answer,) = await sync_to_async(lambda: list(chat.messages.filter(role=Message.Role.ASSISTANT)))()
    assert answer.status == Message.Status.COMPLETE
    assert answer.params["response_format"]["type"] == "json_schema"
    # The schema's longest document is some 30 characters: well within max_tokens, so it is complete.
    assert answer.finish_reason == "stop"
    jsonschema_rs.validate(SCHEMA, json.loads(answer.content))


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_answers_with_a_json_object_without_a_schema(alice, alpha, runtime) -> None:
    chat = await sync_to_async(actions.start_conversation)(
        alice, alpha, max_tokens=48, temperature=1.0, json_answers=True
    )
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "Anything"}))
    await finish_run(chat.pk)
    await communicator.disconnect()
    (answer,) = await sync_to_async(lambda: list(chat.messages.filter(role=Message.Role.ASSISTANT)))()
    assert answer.params["response_format"] == {"type": "json_object"}
    assert answer.content.startswith("{")
    if answer.finish_reason != "length":
        assert isinstance(json.loads(answer.content), dict)


@pytest.mark.django_db
def test_it_shows_an_api_replys_tool_calls_readably_in_the_page(alice, alpha) -> None:
    logged = actions.start_conversation(alice, alpha, source=Conversation.Source.API, title="weather script")
    actions.add_user_message(logged, "Weather in Paris?", author=None)
    (answer,) = actions.start_assistant_messages(logged, 1, params={"model": "m"}, prompt_tokens=5)
    actions.finish_assistant_message(
        answer.pk, actions.Outcome(status="complete", content="", completion_tokens=9, duration=0.1)
    )
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    actions.record_tool_calls(answer.pk, {"tools": [], "tool_choice": "auto"}, [call])
    page = client_for(alice).get(f"/c/{logged.pk}/").content.decode()
    assert 'class="msg-tool-calls"' in page
    assert "get_weather" in page and "call_1" in page
    assert "&quot;city&quot;: &quot;Paris&quot;" in page  # the arguments, indented JSON
