"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest


def shared_dir() -> Path:
    """The team's shared folder (reference data, notes): ``$CHAT_SHARED_DIR`` or ``../shared``.

    A missing folder fails the test instead of skipping it: the reference data is the point.
    """
    configured = os.environ.get("CHAT_SHARED_DIR")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.fail(
            f"the shared folder {path} is missing (set CHAT_SHARED_DIR to its location)", pytrace=False
        )
    return path


def load_reference(name: str) -> dict[str, Any]:
    """One JSON file from ``shared/reference/``."""
    path = shared_dir() / "reference" / name
    if not path.is_file():
        pytest.fail(f"the reference file {path} is missing", pytrace=False)
    return json.loads(path.read_text(encoding="utf-8"))


def case_id(text: str, limit: int = 24) -> str:
    """A short, readable pytest id for a text case."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(short)
