"""Serve a given model through the process's runtime for the duration of a test (the chat tests
use a tiny random model; the browser tests run the real one in a live server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conversations.runtime import Runtime, get_runtime
from inference.model import ChatModel
from tests.tiny_gguf import write_tiny_llama


@contextmanager
def tiny_chat_model(folder: Path, *, context_length: int, **load: int) -> Iterator[ChatModel]:
    """A tiny random model written in ``folder`` and loaded with one slot and one thread (``load``
    passes other ChatModel.load options, such as queue_max), closed at the end."""
    path = write_tiny_llama(folder / "tiny.gguf", context_length=context_length)
    model = ChatModel.load(path, cache_dir=folder / "cache", **{"slots": 1, "threads": 1, **load})
    try:
        yield model
    finally:
        model.close()


@contextmanager
def serving(model: ChatModel) -> Iterator[Runtime]:
    with get_runtime().serving(model) as runtime:
        yield runtime
