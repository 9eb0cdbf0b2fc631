"""The model of the tests that need a long reply but do not check the model's words (drain on
SIGTERM, alive messages, Stop, kill -9): the tiny test GGUF at a fixed pace (CHAT_TEST_ENGINE,
inference/paced.py), so that a reply of N tokens lasts about N x PACE_MS whatever the machine's
load. The real model is kept for the tests that check what it writes."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_gguf import write_tiny_llama

PACE_MS = 20
NO_EOS = {0: -100, 1: -100, 2: -100}  # the tiny vocabulary's control tokens: replies run to max_tokens


def write_paced_model(folder: Path) -> Path:
    """The tiny GGUF, with a context long enough for the longest test reply (3000 tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_tiny_llama(folder / "tiny-paced.gguf", context_length=4096)


def paced_env(model: Path, pace_ms: int = PACE_MS) -> dict[str, str]:
    """The settings of a server or worker process that serves ``model`` at the test pace (or
    ``pace_ms``). One thread: the tiny model needs no more, and ggml's threads spin when the cores
    are busy."""
    return {"CHAT_MODEL_PATH": str(model), "CHAT_TEST_ENGINE": f"paced:{pace_ms}", "CHAT_THREADS": "1"}
