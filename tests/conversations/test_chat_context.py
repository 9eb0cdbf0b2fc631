"""When a conversation outgrows the model's context, its oldest turns are left out of the prompt,
the system prompt stays, and the answer says so (on a tiny model with a 512-token context)."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from conversations import actions
from conversations.live import replies
from conversations.live.replies import ChatError, build_prompt
from conversations.models import Message
from tests.chat_runtime import serving, tiny_chat_model

CONTEXT = 512
SYSTEM = "You are a helpful assistant. Answer in a few words."
SENTENCE = "The quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with tiny_chat_model(
        tmp_path_factory.mktemp("tiny-context"), context_length=CONTEXT, queue_max=4
    ) as model:
        yield model


def history(turns: int, words: int = 6) -> list[dict]:
    out = []
    for i in range(turns):
        out.append({"role": "user", "content": f"Question {i}: " + SENTENCE * words})
        out.append({"role": "assistant", "content": f"Answer {i}: " + SENTENCE * words})
    return out[:-1]  # ends with the question to answer


def test_it_keeps_everything_that_fits(tiny_model) -> None:
    turns = history(2)
    prompt = build_prompt(tiny_model, SYSTEM, turns, 64)
    assert prompt.dropped == 0
    assert prompt.ids == tiny_model.prompt_ids([{"role": "system", "content": SYSTEM}, *turns])


def test_it_leaves_out_the_oldest_turns_and_keeps_the_system_prompt(tiny_model) -> None:
    turns = history(12)
    prompt = build_prompt(tiny_model, SYSTEM, turns, 100)
    assert prompt.dropped > 0 and prompt.dropped % 2 == 0  # whole turns: a question and its answer
    kept = turns[prompt.dropped :]
    assert kept[0]["role"] == "user" and kept[-1] == turns[-1]
    assert prompt.ids == tiny_model.prompt_ids([{"role": "system", "content": SYSTEM}, *kept])
    assert len(prompt.ids) + 100 <= CONTEXT
    # One turn more would not have fitted.
    longer = tiny_model.prompt_ids([{"role": "system", "content": SYSTEM}, *turns[prompt.dropped - 2 :]])
    assert len(longer) + 100 > CONTEXT


def test_it_keeps_system_messages_of_the_history_first(tiny_model) -> None:
    turns = [{"role": "system", "content": "Logged system message."}, *history(12)]
    prompt = build_prompt(tiny_model, "", turns, 100)
    kept = turns[1:][prompt.dropped :]
    assert prompt.dropped > 0
    assert prompt.ids == tiny_model.prompt_ids([turns[0], *kept])


def test_it_generates_less_when_the_last_message_alone_nearly_fills_the_context(tiny_model) -> None:
    turns = [{"role": "user", "content": SENTENCE * 44}]
    n = len(tiny_model.prompt_ids(turns))
    assert CONTEXT - 100 < n < CONTEXT - 16
    prompt = build_prompt(tiny_model, "", turns, 100)
    assert prompt.max_tokens == CONTEXT - n and prompt.dropped == 0


def test_it_refuses_a_message_too_long_for_the_model(tiny_model) -> None:
    with pytest.raises(ChatError, match="too long for the model"):
        build_prompt(tiny_model, "", [{"role": "user", "content": SENTENCE * 60}], 100)


@pytest.mark.django_db(transaction=True)
def test_it_records_and_shows_the_left_out_turns(alice, alpha, tiny_model) -> None:
    chat = actions.start_conversation(alice, alpha, system_prompt=SYSTEM, max_tokens=100)
    for message in history(12)[:-1]:
        actions.add_message(chat, message["role"], message["content"])

    async def send() -> None:
        await replies.send(alice, chat, "And now?")
        await replies.run_of(chat.pk).wait()

    with serving(tiny_model):
        async_to_sync(send)()
    answer = Message.objects.filter(conversation=chat, role="assistant").last()
    assert answer.status == "complete" and answer.params["dropped_messages"] > 0
    client = Client()
    client.force_login(alice)
    page = client.get(f"/c/{chat.pk}/").content.decode()
    assert (
        f"The {answer.params['dropped_messages']} oldest messages of this conversation were left out" in page
    )
