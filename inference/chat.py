"""From chat messages to prompt token ids.

The template is rendered with a unique marker in place of each message's content, and the pieces
are tokenized separately:
- the template's own text with special tokens recognised (``<|im_start|>`` becomes its id);
- message contents WITHOUT special tokens, so a user who types ``<|im_end|>`` cannot forge turns;
- an assistant message that carries the ids the model generated for it gets exactly those ids:
  sampled text does not always re-tokenize to the same ids, and the next turn can only reuse the
  KV cache if they match.
Pre-tokenization splits at these boundaries anyway (a newline or a special token precedes each
content), so the ids equal those of tokenizing the whole rendered prompt.

A template with its own tool syntax also writes the tool list and the assistants' tool calls
(``tools``, ``tool_calls``) as its own text: the texts of special tokens are removed from their
strings first, for the same reason.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from inference.prompts import ChatTemplate, content_text
from inference.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def build_prompt_ids(
    messages: Sequence[dict[str, Any]],
    template: ChatTemplate,
    tokenizer: Tokenizer,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Render ``messages`` (an assistant message may carry ``token_ids``) into prompt token ids.
    ``tools``: for a template with its own tool syntax (``ChatTemplate.tool_syntax``)."""
    tag = secrets.token_hex(8)
    markers: list[str] = []
    pieces: dict[str, list[int] | str] = {}
    rendered = []
    if tools or any("tool_calls" in m for m in messages):
        messages, tools = _scrubbed(messages, tools, tokenizer)
    for i, message in enumerate(messages):
        m = {k: v for k, v in message.items() if k != "token_ids"}
        marker = f"\x1e{tag}:{i}\x1e"
        given = message.get("token_ids")
        if given is not None and message.get("role") == "assistant":
            pieces[marker] = list(given)
        else:
            content = content_text(i, message.get("content"))
            if not content and m.get("tool_calls"):  # a template tests a call's content for emptiness
                rendered.append(m)
                continue
            pieces[marker] = content
        m["content"] = marker
        markers.append(marker)
        rendered.append(m)
    text = template.render(rendered, add_generation_prompt=True, tools=tools)
    positions = [text.find(marker) for marker in markers]
    if any(text.count(marker) != 1 for marker in markers) or positions != sorted(positions):
        return _fallback(messages, template, tokenizer, tools)
    ids: list[int] = []
    rest = text
    for marker in markers:
        before, rest = rest.split(marker, 1)
        ids.extend(tokenizer.encode(before))
        piece = pieces[marker]
        ids.extend(piece if isinstance(piece, list) else tokenizer.encode(piece, parse_special=False))
    ids.extend(tokenizer.encode(rest))
    return ids


def _fallback(
    messages: Sequence[dict[str, Any]],
    template: ChatTemplate,
    tokenizer: Tokenizer,
    tools: list[dict[str, Any]] | None,
) -> list[int]:
    """For a template that transforms or reorders contents: render the real text, with the texts of
    special tokens removed from the contents (they must not become control tokens)."""
    log.info("the chat template transforms message contents: tokenizing the rendered prompt as a whole")
    specials = tokenizer.special_texts
    clean = []
    for i, message in enumerate(messages):
        m = {k: v for k, v in message.items() if k != "token_ids"}
        m["content"] = _scrub(content_text(i, message.get("content")), specials)
        clean.append(m)
    return tokenizer.encode(template.render(clean, add_generation_prompt=True, tools=tools))


def _scrub(value: Any, specials: list[str]) -> Any:
    """``value`` (JSON) with the texts of special tokens removed from every string in it."""
    if isinstance(value, str):
        for special in specials:
            value = value.replace(special, "")
        return value
    if isinstance(value, list):
        return [_scrub(v, specials) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, specials): _scrub(v, specials) for k, v in value.items()}
    return value


def _scrubbed(
    messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Tokenizer
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    specials = tokenizer.special_texts
    out = []
    for message in messages:
        if "tool_calls" in message:
            message = {**message, "tool_calls": _scrub(message["tool_calls"], specials)}
        out.append(message)
    return out, _scrub(tools, specials) if tools else tools
