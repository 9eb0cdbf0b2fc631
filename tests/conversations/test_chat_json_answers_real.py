"""End to end with the real default model: a browser chat with "Answer as JSON" and a schema
answers with a schema-valid document, over the websocket."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from asgiref.sync import sync_to_async

from conversations import actions
from conversations.models import Message
from inference.model import ChatModel
from tests.chat_runtime import serving
from tests.fixtures_model import default_model_cache, default_model_path
from tests.ws_chat import connect, finish_run

pytestmark = [pytest.mark.model, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 50},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def real_model():
    cache = default_model_cache()
    loaded = ChatModel.load(default_model_path(), cache_dir=cache, threads=1, slots=1)
    yield loaded
    loaded.close()


async def test_it_answers_schema_valid_json_with_the_real_model(alice, alpha, real_model) -> None:
    chat = await sync_to_async(actions.start_conversation)(
        alice, alpha, max_tokens=64, temperature=0.0, json_answers=True, json_schema=SCHEMA
    )
    with serving(real_model):
        communicator, connected, _ = await connect(alice, chat.pk)
        assert connected
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "Tell me about Paris."}))
        await finish_run(chat.pk, timeout=120)
        await communicator.disconnect()
    (answer,) = await sync_to_async(lambda: list(chat.messages.filter(role=Message.Role.ASSISTANT)))()
    assert answer.status == Message.Status.COMPLETE, answer.error
    print("real model answer:", answer.finish_reason, answer.completion_tokens, repr(answer.content))
    if answer.finish_reason == "length":  # cut by max_tokens: still the start of a document
        assert answer.content.startswith('{"city": "')
    else:
        assert answer.finish_reason == "stop"
        jsonschema_rs.validate(SCHEMA, json.loads(answer.content))
