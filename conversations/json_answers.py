""" "Answer as JSON" in the browser chat: the conversation's replies are generated under a grammar,
through the same ``SamplingParams.grammar`` path as the API's ``response_format``.

- Without a schema: any JSON object (the API's ``{"type": "json_object"}``).
- With a schema: documents valid against it (``json_schema`` with ``strict``).
- The schema is checked when the settings are saved (llguidance compiles it; its reason is the
  form's error), against the loaded model's tokenizer when there is one, else without one (the
  schema's own errors: unknown types, unsatisfiable bounds, unsupported keywords or patterns). The
  grammar is checked again against the tokenizer when a reply starts.
- Only the embedded model decodes under a grammar; a conversation on an upstream model with
  "Answer as JSON" on is told so instead of getting unconstrained text.
"""

from __future__ import annotations

import json
from typing import Any

from llguidance import LLMatcher

from conversations.models import Conversation
from inference.constraints import ConstraintError, check, json_object_grammar, json_schema_grammar
from inference.tokenizer import Tokenizer


def parse_schema(text: str, tokenizer: Tokenizer | None) -> dict[str, Any] | None:
    """The schema typed in the settings form (blank: None), or ``ConstraintError`` saying why not."""
    if not text.strip():
        return None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConstraintError(f"the schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConstraintError("the schema must be a JSON object")
    grammar = _schema_grammar(schema)
    try:
        if tokenizer is not None:
            check(grammar, tokenizer)
        else:  # the model is still loading: the schema's own errors
            is_error, found = LLMatcher.validate_grammar_with_warnings(grammar)
            if is_error:
                raise ConstraintError(found[0] if found else "the grammar does not compile")
    except ConstraintError as exc:
        raise ConstraintError(f"the schema cannot be used: {exc}") from None
    return schema


def _schema_grammar(schema: dict[str, Any]) -> str:
    try:
        return json_schema_grammar(schema)
    except ConstraintError as exc:
        raise ConstraintError(f"the schema cannot be used: {exc}") from None


def response_format(conversation: Conversation) -> dict[str, Any] | None:
    """The API-shaped response_format the conversation's replies follow (recorded with each)."""
    if not conversation.json_answers:
        return None
    if conversation.json_schema is None:
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": conversation.json_schema, "strict": True},
    }


def grammar(conversation: Conversation, tokenizer: Tokenizer) -> str | None:
    """The checked grammar of the conversation's replies, or None (free text)."""
    if not conversation.json_answers:
        return None
    if conversation.json_schema is None:
        built = json_object_grammar()
    else:
        built = _schema_grammar(conversation.json_schema)
    check(built, tokenizer)
    return built
