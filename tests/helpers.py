"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def load_reference(name: str) -> dict[str, Any]:
    """One JSON file of ``tests/reference/``: token ids, chat prompts and greedy outputs of the
    reference llama.cpp on the default model (a copy of the team's ``shared/reference/``, kept in
    the repository so that a clone alone runs the tests)."""
    path = REFERENCE_DIR / name
    if not path.is_file():
        pytest.fail(f"the reference file {path} is missing", pytrace=False)
    return json.loads(path.read_text(encoding="utf-8"))


def case_id(text: str, limit: int = 24) -> str:
    """A short, readable pytest id for a text case."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(short)
