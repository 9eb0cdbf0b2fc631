"""A browser chat's reply from a model an upstream server runs.

The reply is an ordinary streaming row followed by the runner (coalesced renders, Stop, heartbeats,
interrupted on crash): the relay (``inference.upstream.relay``) feeds its job from the upstream's
stream. The call is opened in the relay's task, so that Stop works while the upstream is still
working on the first token; the replica is picked before the reply's row is written, so the row
names its connection from the start (corrected, before any token, if another replica takes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser

from conversations import actions, queries
from conversations.api.upstream import token_counter
from conversations.live import runner
from conversations.models import Conversation
from inference.sampling import SamplingParams
from inference.upstream.connection import Opened
from inference.upstream.relay import Relay, new_jobs
from upstreams import registry


def chat_messages(system_prompt: str, history: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conversation as an upstream takes it: the system prompt and system messages first."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    system += [{"role": "system", "content": m["content"]} for m in history if m["role"] == "system"]
    return system + [{"role": m["role"], "content": m["content"]} for m in history if m["role"] != "system"]


async def generate(
    user: AbstractBaseUser,
    conversation: Conversation,
    model_id: str,
    params: SamplingParams,
    track: Callable[[int, runner.Run], None],
    *,
    version_of: int | None = None,
) -> None:
    count = token_counter()

    def prompt() -> tuple[list[dict[str, str]], int]:
        # One trip to a thread: the history (a read) and its count (an estimate, until the
        # upstream reports its usage; a long history must not stall the event loop).
        messages = chat_messages(conversation.system_prompt, queries.prompt_messages(conversation))
        return messages, count("\n".join(m["content"] for m in messages)) if count is not None else 0

    messages, prompt_tokens = await database_sync_to_async(prompt, thread_sensitive=False)()
    body = {
        "model": model_id,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    pool = await registry.apool()
    # The replica is chosen now, so that the reply's row names it from the start; a call that
    # moves to another replica has its row corrected once it is open.
    first = pool.pick(model_id)
    record = {
        "model": model_id,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "dropped_messages": 0,
        **({"upstream": first.name} if first is not None else {}),
    }
    (message,) = await database_sync_to_async(actions.start_assistant_messages)(
        conversation, 1, params=record, prompt_tokens=prompt_tokens, version_of=version_of
    )

    async def opening() -> Opened:
        opened = await pool.open(model_id, body, stream=True, first=first)
        if opened.connection.name != record.get("upstream"):
            try:
                await database_sync_to_async(actions.record_upstream)([message.pk], opened.connection.name)
            except BaseException:
                await opened.aclose()
                raise
        return opened

    jobs = new_jobs(1, f"user-{user.pk}")
    relay = Relay(jobs, count_tokens=count, prompt_tokens=prompt_tokens)
    relay.start(opening())
    track(conversation.pk, runner.start(conversation.pk, jobs, [message]))
