"""An upstream's stream chunk passed on with its ``model`` set to the id the client asked for.

Re-encoding every chunk (``json.dumps`` of the decoded object) costs in proportion to its size
(logprobs make chunks large). ``with_model`` edits the upstream's own text instead, where it can
tell without decoding again that the edit is exact: the one top-level ``model`` key is found, and
its string value replaced. Anything else (a nested or repeated ``model`` key, escapes that could
spell one, a value that is not a string) answers None, and the caller re-encodes.
"""

from __future__ import annotations

import json

KEY = '"model"'
_decoder = json.JSONDecoder()
_SPACE = " \t\n\r"


def with_model(raw: str, model: str) -> str | None:
    """``raw`` (one chunk: a JSON object, as the upstream wrote it) with its top-level ``model``
    set to ``model``, or None when that is not certain without decoding it."""
    at = raw.find(KEY)
    if at < 0 or not raw.startswith("{"):
        return None
    head = raw[1:at]
    # The key is at the top level, outside any string: before it nothing opens or closes a nested
    # value, nothing is escaped (so every quote there delimits a string), and the quotes pair up.
    if "{" in head or "[" in head or "}" in head or "]" in head or "\\" in head or head.count('"') % 2:
        return None
    i = _skip_space(raw, at + len(KEY))
    if i >= len(raw) or raw[i] != ":":
        return None  # "model" was a value, not a key
    i = _skip_space(raw, i + 1)
    try:
        value, end = _decoder.raw_decode(raw, i)
    except ValueError:
        return None
    if not isinstance(value, str):
        return None
    # A later "model" key would be the one a decoder keeps; only \u escapes could spell one.
    if raw.find(KEY, end) >= 0 or raw.find("\\u", end) >= 0:
        return None
    return raw[:i] + json.dumps(model, ensure_ascii=False) + raw[end:]


def _skip_space(raw: str, i: int) -> int:
    while i < len(raw) and raw[i] in _SPACE:
        i += 1
    return i
