"""The inference worker protocol's messages, declared once (the client and the server both use
these; see client.py for the conversation they make).

On the channel layer a message is a plain dict with a ``type`` (what channels sends); ``parse``
turns one into its model (a ``pydantic.ValidationError`` for a malformed one) and ``dump`` back.
A job's events travel as ``event_to_dict`` / ``event_from_dict`` of ``inference.jobs`` events.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from inference.jobs import Delta, Event, Finished, Queued, Started, Timings, Usage
from inference.sampling import TokenLogprob

WORKER_CHANNEL = "chatsite.inference"  # the submits' channel, shared by every worker of one Redis
ALIVE_INTERVAL = 2.0  # seconds between the worker's alive messages to each web process


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Submit(_Message):
    """Web process → any worker: admit ``n`` jobs (all or none), answer on ``reply_channel``."""

    type: Literal["inference.submit"] = "inference.submit"
    request_id: str
    reply_channel: str
    prompt_ids: list[int]
    params: dict[str, Any]  # SamplingParams.to_json()
    n: int
    user_key: str = ""


class Cancel(_Message):
    """Web process → the job's own worker (its ``worker_channel``): at most one more token."""

    type: Literal["inference.cancel"] = "inference.cancel"
    job_id: str


class Admitted(_Message):
    """Worker → web process: the jobs' ids (uuid4 hex, unique across workers and restarts), the
    worker's random id and own channel, and ``seqs``, the admissions' numbers at that worker."""

    type: Literal["inference.admitted"] = "inference.admitted"
    request_id: str
    worker: str
    worker_channel: str
    job_ids: list[str]
    seqs: list[int]
    max_tokens: int


class Refused(_Message):
    """Worker → web process: nothing admitted. ``kind`` context carries the numbers of
    ``ContextLengthExceeded``."""

    type: Literal["inference.refused"] = "inference.refused"
    request_id: str
    kind: Literal["overloaded", "context"]
    message: str
    prompt_tokens: int | None = None
    max_tokens: int | None = None
    context_length: int | None = None


class JobEvent(_Message):
    """Worker → web process: one event of one job, in order."""

    type: Literal["inference.event"] = "inference.event"
    worker: str
    job_id: str
    event: dict[str, Any]  # event_to_dict


class Alive(_Message):
    """Worker → each web process with jobs there: which of them still run, up to admission
    ``last_seq``."""

    type: Literal["inference.alive"] = "inference.alive"
    worker: str
    job_ids: list[str]
    last_seq: int


Message = Annotated[
    Submit | Cancel | Admitted | Refused | JobEvent | Alive,
    Field(discriminator="type"),
]
_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def parse(data: dict[str, Any]) -> Message:
    return _MESSAGE.validate_python(data)


def dump(message: _Message) -> dict[str, Any]:
    return message.model_dump()


def job_event(worker: str, job_id: str, event: Event) -> dict[str, Any]:
    """``dump(JobEvent(...))`` without building the model: the worker sends one per token."""
    return {"type": "inference.event", "worker": worker, "job_id": job_id, "event": event_to_dict(event)}


def event_to_dict(event: Event) -> dict[str, Any]:
    d = dataclasses.asdict(event)
    if isinstance(event, Delta):
        d["token_ids"] = list(event.token_ids)
    if isinstance(event, Finished) and event.token_ids is not None:
        d["token_ids"] = list(event.token_ids)
    return d


def event_from_dict(d: dict[str, Any]) -> Event:
    kind = d["type"]
    if kind == "queued":
        return Queued(d["n_ahead"])
    if kind == "started":
        return Started(d["cached_tokens"])
    if kind == "delta":
        logprobs = tuple(
            TokenLogprob(p["token_id"], p["logprob"], tuple((int(i), lp) for i, lp in p["top"]))
            for p in d.get("logprobs", ())
        )
        return Delta(d["text"], tuple(d["token_ids"]), logprobs)
    if kind == "finished":
        return Finished(
            reason=d["reason"],
            usage=Usage(**d["usage"]),
            timings=Timings(**d["timings"]),
            text=d["text"],
            token_ids=tuple(d["token_ids"]) if d["token_ids"] is not None else None,
            error=d["error"],
        )
    raise ValueError(f"unknown event type {kind!r}")
