"""A browser chat's reply from a model an upstream server runs.

The reply is an ordinary streaming row followed by the runner (coalesced renders, Stop, heartbeats,
interrupted on crash): the relay (``inference.upstream.relay``) feeds its job from the upstream's
stream. The call is opened in the relay's task, so that Stop works while the upstream is still
working on the first token; its connection is written into the reply's params once it is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser

from conversations import actions, queries
from conversations.api.upstream import token_counter
from conversations.live import runner
from conversations.models import Conversation, Message
from inference.sampling import SamplingParams
from inference.upstream.connection import Opened
from inference.upstream.relay import Relay, new_jobs
from upstreams import registry


def chat_messages(system_prompt: str, history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation as an upstream takes it: the system prompt and system messages first."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    system += [{"role": "system", "content": m["content"]} for m in history if m["role"] == "system"]
    return system + [{"role": m["role"], "content": m["content"]} for m in history if m["role"] != "system"]


def _record_connection(message_id: int, name: str) -> None:
    message = Message.objects.get(pk=message_id)
    Message.objects.filter(pk=message_id).update(params={**message.params, "upstream": name})


async def generate(
    user: AbstractBaseUser,
    conversation: Conversation,
    model_id: str,
    params: SamplingParams,
    track: Callable[[int, runner.Run], None],
    *,
    version_of: int | None = None,
) -> None:
    history = await database_sync_to_async(queries.prompt_messages)(conversation)
    messages = chat_messages(conversation.system_prompt, history)
    body = {
        "model": model_id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    count = token_counter()
    prompt_tokens = 0
    if count is not None:  # an estimate, until the upstream reports its usage
        text = "\n".join(m["content"] for m in messages)
        prompt_tokens = await sync_to_async(count, thread_sensitive=False)(text)
    record = {
        "model": model_id,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "dropped_messages": 0,
    }
    (message,) = await database_sync_to_async(actions.start_assistant_messages)(
        conversation, 1, params=record, prompt_tokens=prompt_tokens, version_of=version_of
    )
    pool = await registry.apool()

    async def opening() -> Opened:
        opened = await pool.open(model_id, body, stream=True)
        try:
            await database_sync_to_async(_record_connection)(message.pk, opened.connection.name)
        except BaseException:
            await opened.aclose()
            raise
        return opened

    jobs = new_jobs(1, f"user-{user.pk}")
    relay = Relay(jobs, count_tokens=count, prompt_tokens=prompt_tokens)
    relay.start(opening())
    track(conversation.pk, runner.start(conversation.pk, jobs, [message]))
