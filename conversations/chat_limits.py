"""The browser chat's side of the limits (review/limits.py): a message is refused before anything
is written, with the limit reached and when it resets; the page keeps the typed text."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from conversations.models import Conversation
from review import limits


class LimitRefused(Exception):
    """Raised as ``replies.ChatError`` (see ``reserve_now``); ``keep_text`` goes back to the composer."""


def _estimate(conversation: Conversation, text: str | None) -> int:
    """Prompt + max tokens of the reply about to be asked for (settled with the real usage later)."""
    from conversations import queries
    from conversations.live import replies
    from conversations.runtime import ModelNotReady, get_runtime

    wanted = conversation.max_tokens or replies.default_max_tokens()
    history = queries.prompt_messages(conversation)
    if text is not None:
        history.append({"role": "user", "content": text})
    upstream_prompt = _upstream_prompt_tokens(conversation, history)
    if upstream_prompt is not None:
        return upstream_prompt + wanted
    try:
        prompt = replies.build_prompt(get_runtime().get(), conversation.system_prompt, history, wanted)
    except (ModelNotReady, replies.ChatError):
        return wanted  # no reply will start: the reservation is given back at once
    return len(prompt.ids) + prompt.max_tokens


def _upstream_prompt_tokens(conversation: Conversation, history: list[dict]) -> int | None:
    """The prompt of a reply an upstream writes, counted as conversations/live/upstream_replies.py
    counts it (all the history, no template); None for the embedded model."""
    from conversations.api.upstream import token_counter
    from conversations.live import upstream_replies
    from upstreams import choices

    if choices.model_for(conversation.model_id) == choices.embedded_model_id():
        return None
    count = token_counter()
    messages = upstream_replies.chat_messages(conversation.system_prompt, history)
    return count("\n".join(m["content"] for m in messages)) if count is not None else 0


def _reserve(user: AbstractBaseUser, conversation: Conversation, text: str | None) -> limits.Reservation:
    # The socket's access check (live_access.check) says whether any limit applies: none (most
    # users) means nothing to read or take. A conversation read elsewhere has not said.
    known_none = getattr(conversation, "limits_apply", True) is False
    applying = [] if known_none else limits.limits_for(conversation.team_id, user.pk)
    if not applying:
        return limits.Reservation()
    return limits.reserve(
        team_id=conversation.team_id,
        user_id=user.pk,
        tokens=_estimate(conversation, text),
        applying=applying,
    )


def reserve_now(
    user: AbstractBaseUser, conversation: Conversation, text: str | None, error: type[Exception]
) -> limits.Reservation:
    """Reserve for one reply, or raise ``error`` (``replies.ChatError``) saying which limit was
    reached and when it resets, with ``keep_text`` = the typed ``text``. Synchronous: the reply's
    first trip to a thread runs it with the rest of what it reads (conversations/live/replies.py)."""
    try:
        return _reserve(user, conversation, text)
    except limits.LimitReached as exc:
        what = "requests per minute" if exc.rule.kind == limits.REQUESTS else "tokens per day"
        refused = error(
            f"Limit reached: {exc.rule.label} may use {exc.rule.limit} {what} (used {exc.used}). "
            f"It resets {exc.reset_text}. Your message was not sent; it is still in the box."
        )
        refused.keep_text = text
        raise refused from None
    except limits.LimitsUnavailable:
        unavailable = error("Your limits cannot be checked right now: try again in a moment.")
        unavailable.keep_text = text
        raise unavailable from None
