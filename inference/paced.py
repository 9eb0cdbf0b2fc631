"""A test-only engine whose generated tokens come at a fixed pace, whatever the machine's speed.

``PacedEngine`` wraps a real engine (in the tests, ctransformers running the tiny GGUF of
tests/tiny_gguf.py): every evaluation runs for real, and the logits after it are handed out no
sooner than ``seconds_per_token`` after the evaluation started. A reply of N tokens then takes
about N x the pace on a quiet machine and on a busy one alike, as long as one evaluation of the
model takes less than the pace (the tiny model's take well under a millisecond). The tests that
need a reply to still be running while they act (drain on SIGTERM, alive messages, Stop, kill -9)
use it instead of hundreds of tokens of the real model.

The wait is in ``logits()``, which the token loop calls outside the core budget, so a slot that
waits for its next token holds no threads and other slots evaluate meanwhile.

Selected with ``CHAT_TEST_ENGINE=paced:<milliseconds per token>`` (refused when ``DEBUG=0``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from inference.engine import Engine, EngineContext
    from inference.gguf import GGUFInfo


class PacedContext:
    def __init__(self, inner: EngineContext, seconds_per_token: float) -> None:
        self._inner = inner
        self._pace = seconds_per_token
        self._due = 0.0  # when the logits of the last evaluation may be handed out

    @property
    def tokens(self) -> list[int]:
        return self._inner.tokens

    def eval(self, ids: list[int], *, threads: int, batch_size: int) -> None:
        started = time.monotonic()
        self._inner.eval(ids, threads=threads, batch_size=batch_size)
        self._due = started + self._pace

    def truncate(self, n: int) -> None:
        self._inner.truncate(n)

    def logits(self) -> np.ndarray:
        wait = self._due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return self._inner.logits()


class PacedEngine:
    def __init__(self, inner: Engine, seconds_per_token: float) -> None:
        if seconds_per_token <= 0:
            raise ValueError("the pace must be positive")
        self.inner = inner
        self.seconds_per_token = seconds_per_token
        self.info: GGUFInfo = inner.info
        self.context_length = inner.context_length
        self.vocab_size = inner.vocab_size

    def new_context(self) -> PacedContext:
        return PacedContext(self.inner.new_context(), self.seconds_per_token)


def parse_test_engine(value: str) -> float:
    """Seconds per token from ``paced:<milliseconds>``; ``ValueError`` for anything else."""
    kind, _, ms = value.partition(":")
    try:
        milliseconds = float(ms)
    except ValueError:
        milliseconds = -1.0
    if kind != "paced" or not 0 < milliseconds <= 10_000:
        raise ValueError("expected paced:<milliseconds per token>, from 0 to 10000 (e.g. paced:20)")
    return milliseconds / 1000
