"""The process's one model runtime: loaded once, lazily, from the settings.

Django-facing glue around ``inference.model.ChatModel``: it reads the settings, loads the model in a
background thread (so the server answers while it loads), and reports its state for the status
page and /ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings

from inference.gguf import ModelFileError
from inference.model import ChatModel, model_id_for

log = logging.getLogger(__name__)


class ModelNotReady(Exception):
    """The model is still loading, or failed to load."""


class Runtime:
    def __init__(self) -> None:
        self.model_path = str(settings.CHAT_MODEL_PATH or "")
        self.cache_dir = Path(settings.CHAT_DATA_DIR) / "models"
        self.context_length = settings.CHAT_CONTEXT_LENGTH
        self.slots = settings.CHAT_SLOTS
        self.threads = settings.CHAT_THREADS
        self.queue_max = settings.CHAT_QUEUE_MAX
        self.prefill_chunk = settings.CHAT_PREFILL_CHUNK
        self.nice = settings.CHAT_MODEL_NICE
        self.token_pace = settings.CHAT_TEST_TOKEN_PACE  # test-only (CHAT_TEST_ENGINE=paced:<ms>)
        self.state = "not loaded"
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.model: ChatModel | None = None
        self.shutting_down = False
        # In a web process of a multi-process deployment, generations run in the inference worker.
        self.use_worker = settings.CHAT_INFERENCE_WORKER
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return model_id_for(self.model_path) if self.model_path else ""

    def start_loading(self) -> None:
        """Begin loading in a background thread (idempotent)."""
        with self._lock:
            if self._thread is not None or self.state in ("ready", "error"):
                return
            self.state = "loading"
            self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
            self._thread.start()

    def load(self, timeout: float | None = None) -> ChatModel:
        """Load (or wait for) the model and return it; raise ``ModelNotReady`` on failure."""
        self.start_loading()
        self._ready.wait(timeout)
        if self.model is None:
            raise ModelNotReady(self.error or "the model is still loading")
        return self.model

    def get(self) -> ChatModel:
        """The loaded model, without waiting: ``ModelNotReady`` while it loads or shuts down."""
        if self.shutting_down:
            raise ModelNotReady("the server is shutting down")
        if self.model is None:
            self.start_loading()
            raise ModelNotReady(self.error or "the model is still loading")
        return self.model

    def _load(self) -> None:
        start = time.monotonic()
        try:
            if not self.model_path:
                raise ModelFileError(
                    "CHAT_MODEL_PATH", "no model is configured and the default model is not installed"
                )
            if self.use_worker:
                from channels.layers import get_channel_layer

                from inference.remote.client import load_remote_model

                self.model = load_remote_model(
                    self.model_path,
                    get_channel_layer(),
                    context_length=self.context_length,
                    slots=self.slots,
                    queue_max=self.queue_max,
                )
                self.load_seconds = time.monotonic() - start
                self.state = "ready"
                return
            model = ChatModel.load(
                self.model_path,
                cache_dir=self.cache_dir,
                context_length=self.context_length,
                slots=self.slots,
                threads=self.threads,
                queue_max=self.queue_max,
                prefill_chunk=self.prefill_chunk,
                token_pace=self.token_pace,
                nice=self.nice,
            )
        except Exception as exc:
            log.exception("the model failed to load")
            self.error = str(exc)
            self.state = "error"
        else:
            if settings.CHAT_TTFT_TRACE:  # a benchmark: time the raw engine after each reply
                from conversations.ttft import probe_raw_engine

                probe_raw_engine(model)
            self.model = model
            self.load_seconds = time.monotonic() - start
            self.state = "ready"
            log.info("model %s ready in %.1f s", model.model_id, self.load_seconds)
            if self.token_pace:
                log.warning(
                    "CHAT_TEST_ENGINE: each token takes at least %g ms (tests only)", self.token_pace * 1e3
                )
        finally:
            self._ready.set()
            if self.model is not None:
                self._fingerprint_model_file()

    def _fingerprint_model_file(self) -> None:
        """Read the model file's SHA-256 (review/replay.py logs it with every API answer) here, in
        the loading thread once the model is ready, rather than in the first API call's path."""
        from review.replay import model_file, model_sha256

        try:
            model_sha256(model_file(self.model))
        except OSError:
            log.exception("the model file could not be read for its fingerprint")

    def status(self) -> dict[str, Any]:
        model = self.model
        scheduler = model.scheduler if model else None
        return {
            "model_path": self.model_path,
            "model_name": model.engine.info.name if model else self.model_id,
            "model_id": self.model_id,
            "state": "shutting down" if self.shutting_down else self.state,
            "error": self.error,
            "context_length": model.engine.context_length if model else self.context_length,
            "slots": self.slots,
            "threads": self.threads,
            "queue_depth": scheduler.queue_depth if scheduler else 0,
            "queue_max": self.queue_max,
            "running": scheduler.running if scheduler else 0,
            "load_seconds": self.load_seconds,
        }

    def drain(self, timeout: float) -> dict[str, int]:
        """Stop admitting work (new requests get 503), let running generations finish for up to
        ``timeout`` seconds, then cancel the rest (their replies end as interrupted)."""
        self.shutting_down = True
        if self.model is None:
            return {"queued_cancelled": 0, "finished": 0, "cancelled": 0}
        return self.model.scheduler.drain(timeout)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()

    @contextmanager
    def serving(self, model: ChatModel) -> Iterator[Runtime]:
        """Serve ``model`` (loaded by the caller, e.g. a test's tiny model) while the block runs,
        then what was there before. A load in progress finishes first, or it would replace
        ``model`` half-way through."""
        if self._thread is not None:
            self._thread.join(timeout=300)
        saved = self.model, self.state
        self.model, self.state = model, "ready"
        try:
            yield self
        finally:
            self.model, self.state = saved


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime (made from the settings at first use)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime


@contextmanager
def installed(runtime: Runtime) -> Iterator[Runtime]:
    """Make ``runtime`` the process's runtime (what ``get_runtime`` returns) while the block runs."""
    global _runtime
    with _runtime_lock:
        saved, _runtime = _runtime, runtime
    try:
        yield runtime
    finally:
        with _runtime_lock:
            _runtime = saved
