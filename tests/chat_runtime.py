"""Serve a given model through the process's runtime for the duration of a test (the chat tests
use a tiny random model; the browser tests run the real one in a live server)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chatsite.runtime import Runtime, get_runtime
from inference.model import ChatModel


@contextmanager
def serving(model: ChatModel) -> Iterator[Runtime]:
    runtime = get_runtime()
    # A page test may have started loading the real model in the background: let that finish
    # first, or it would replace the tiny model half-way through the test.
    if runtime._thread is not None:
        runtime._thread.join(timeout=300)
    saved = runtime.model, runtime.state
    runtime.model, runtime.state = model, "ready"
    try:
        yield runtime
    finally:
        runtime.model, runtime.state = saved
