"""The backend interface: what runs generations for the web side, whichever it is.

``inference.scheduler.Scheduler`` runs them here (slots x threads over the engine);
``inference.remote.client.RemoteScheduler`` hands them to the inference worker. The web side
(conversations/runtime.py, the chat, /v1, the status page) sees only this interface, through
``ChatModel.scheduler``, and ``ModelFile`` of the engine.
"""

from __future__ import annotations

from typing import Protocol

from inference.gguf import GGUFInfo
from inference.jobs import Job
from inference.sampling import SamplingParams


class ModelFile(Protocol):
    """What the web side reads of an engine: the file's metadata and the context it runs with."""

    @property
    def info(self) -> GGUFInfo: ...

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...


class Backend(Protocol):
    """Admission is decided at once: ``submit_n`` returns n jobs, or raises ``Overloaded`` /
    ``ContextLengthExceeded`` (inference/jobs.py) before anything runs; n jobs are admitted all or
    none. Each job then yields its events (Queued, Started, Deltas, one Finished) and stops within
    a token of ``job.cancel()``."""

    @property
    def context_length(self) -> int: ...

    @property
    def capacity(self) -> int:
        """The most jobs it could ever hold at once (running and queued)."""
        ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    def resolve_max_tokens(self, n_prompt: int, max_tokens: int | None) -> int:
        """The completion limit for a prompt of ``n_prompt`` tokens (``ContextLengthExceeded`` when
        it cannot fit)."""
        ...

    def submit(self, prompt_ids: list[int], params: SamplingParams, *, user_key: str = "") -> Job: ...

    def submit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]: ...

    async def asubmit(self, prompt_ids: list[int], params: SamplingParams, *, user_key: str = "") -> Job: ...

    async def asubmit_n(
        self, prompt_ids: list[int], params: SamplingParams, n: int, *, user_key: str = ""
    ) -> list[Job]: ...

    def drain(self, timeout: float) -> dict[str, int]:
        """Stop admitting, let running jobs finish for ``timeout`` s, cancel the rest."""
        ...

    def close(self) -> None: ...
