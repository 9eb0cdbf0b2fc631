"""Text that can be stored and tokenized, checked once for every way in (forms, /v1, websocket).

Two things decode fine from JSON or a form and then fail far away: a NUL character (PostgreSQL's
text and jsonb cannot hold one) and a lone surrogate such as ``"\\ud800"`` (valid in a JSON string
escape, but not Unicode text: encoding it as UTF-8 fails, in the tokenizer and in the database).
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """What in ``text`` cannot be stored or tokenized, said for a person ("a NUL character …"),
    or ``None`` when it is fine."""
    if "\x00" in text:
        return "a NUL character (\\u0000)"
    found = _SURROGATE.search(text)
    if found is not None:
        return f"a lone surrogate (\\u{ord(found.group()):04x}), which is not valid Unicode text"
    return None
