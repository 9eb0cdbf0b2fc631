"""From chat messages to prompt token ids.

The template is rendered to text and tokenized, except that an assistant message which carries the
token ids the model generated for it gets exactly those ids spliced in: sampled text does not always
re-tokenize to the same ids, and the next turn can only reuse the KV cache if the ids match.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from inference.prompts import ChatTemplate
from inference.tokenizer import Tokenizer


def build_prompt_ids(
    messages: Sequence[dict[str, Any]], template: ChatTemplate, tokenizer: Tokenizer
) -> list[int]:
    """Render ``messages`` (each may carry ``token_ids``) and return the prompt's token ids."""
    marker = f"\x1e{secrets.token_hex(8)}:"
    spliced: dict[str, list[int]] = {}
    rendered_messages = []
    for i, message in enumerate(messages):
        m = {k: v for k, v in message.items() if k != "token_ids"}
        ids = message.get("token_ids")
        if ids is not None and message.get("role") == "assistant":
            key = f"{marker}{i}\x1e"
            spliced[key] = list(ids)
            m["content"] = key
        rendered_messages.append(m)
    text = template.render(rendered_messages, add_generation_prompt=True)
    if not spliced:
        return tokenizer.encode(text)
    if any(text.count(key) != 1 for key in spliced):
        # The template dropped or repeated a message: fall back to plain text for all of them.
        return tokenizer.encode(
            template.render(list(messages_without_ids(messages)), add_generation_prompt=True)
        )
    ids: list[int] = []
    rest = text
    for key, key_ids in spliced.items():
        before, rest = rest.split(key, 1)
        ids.extend(tokenizer.encode(before))
        ids.extend(key_ids)
    ids.extend(tokenizer.encode(rest))
    return ids


def messages_without_ids(messages: Sequence[dict[str, Any]]):
    for message in messages:
        yield {k: v for k, v in message.items() if k != "token_ids"}
