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
    messages: Sequence[dict[str, Any]], template: ChatTemplate, tokenizer: Tokenizer
) -> list[int]:
    """Render ``messages`` (an assistant message may carry ``token_ids``) into prompt token ids."""
    tag = secrets.token_hex(8)
    markers: list[str] = []
    pieces: dict[str, list[int] | str] = {}
    rendered = []
    for i, message in enumerate(messages):
        m = {k: v for k, v in message.items() if k != "token_ids"}
        marker = f"\x1e{tag}:{i}\x1e"
        ids = message.get("token_ids")
        if ids is not None and message.get("role") == "assistant":
            pieces[marker] = list(ids)
        else:
            pieces[marker] = content_text(i, message.get("content"))
        m["content"] = marker
        markers.append(marker)
        rendered.append(m)
    text = template.render(rendered, add_generation_prompt=True)
    positions = [text.find(marker) for marker in markers]
    if any(text.count(marker) != 1 for marker in markers) or positions != sorted(positions):
        return _fallback(messages, template, tokenizer)
    ids: list[int] = []
    rest = text
    for marker in markers:
        before, rest = rest.split(marker, 1)
        ids.extend(tokenizer.encode(before))
        piece = pieces[marker]
        ids.extend(piece if isinstance(piece, list) else tokenizer.encode(piece, parse_special=False))
    ids.extend(tokenizer.encode(rest))
    return ids


def _fallback(messages: Sequence[dict[str, Any]], template: ChatTemplate, tokenizer: Tokenizer) -> list[int]:
    """For a template that transforms or reorders contents: render the real text, with the texts of
    special tokens removed from the contents (they must not become control tokens)."""
    log.info("the chat template transforms message contents: tokenizing the rendered prompt as a whole")
    specials = sorted((tokenizer.decode([i]) for i in tokenizer.special_ids), key=len, reverse=True)
    clean = []
    for i, message in enumerate(messages):
        text = content_text(i, message.get("content"))
        for special in specials:
            if special:
                text = text.replace(special, "")
        m = {k: v for k, v in message.items() if k != "token_ids"}
        m["content"] = text
        clean.append(m)
    return tokenizer.encode(template.render(clean, add_generation_prompt=True))
