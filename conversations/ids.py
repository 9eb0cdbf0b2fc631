"""Database ids given as text (URLs, form fields, websocket messages)."""

from __future__ import annotations

MAX_ID = 2**63 - 1  # the largest id a database row can have


def parse_id(value: object) -> int | None:
    """A database id given as text (or a JSON integer): ASCII digits within 64 bits, else ``None``.

    (``"²".isdigit()`` is true and ``int("²")`` fails; an id past 64 bits fails on SQLite.)
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    digits = str(value) if isinstance(value, str) or 0 <= value <= MAX_ID else ""
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19 or int(digits) > MAX_ID:
        return None
    return int(digits)
