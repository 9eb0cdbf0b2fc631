"""Replay a logged local-model answer and compare it with the log, token by token.

An API call logs its messages exactly, its sampling parameters (seed included), and, from now on,
the SHA-256 of the model file and of the prompt's token ids. A replay rebuilds the prompt from the
logged messages, checks that it gives the same ids (same hash) and that the model file is the same
(same hash), runs the same parameters (the same choice of an n > 1 call: its seed offset) for as
many tokens as were logged, and lists both sequences with the first difference.

Not replayable (said so, nothing run): browser answers (their prompt depended on the history and
settings of the moment), answers logged before the hashes were recorded, random sampling without a
seed, answers without token ids (cut by a stop string, or failed), and a model file that changed.
Equal tokens need reproducible seeded generation from the engine (issue 9 covers a warm KV cache).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from django.conf import settings

from conversations.models import Conversation, Message
from inference.jobs import Finished
from inference.sampling import SamplingParams

TIMEOUT = 300.0  # seconds a replay may take


def model_sha256(path: str | None = None) -> str:
    """The SHA-256 of the served model file (computed once per file version and process)."""
    path = path or settings.CHAT_MODEL_PATH or ""
    stat = os.stat(path)
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prompt_sha256(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def model_file(model: Any) -> str | None:
    """The GGUF file ``model`` was loaded from (the web process of a worker deployment has no engine:
    the configured file, which the worker loads too)."""
    return getattr(getattr(model, "engine", None), "model_path", None) or settings.CHAT_MODEL_PATH


def logged_fingerprints(model: Any, prompt_ids: list[int]) -> dict[str, str]:
    """What an API call logs with its parameters so that it can be replayed."""
    return {"model_sha256": model_sha256(model_file(model)), "prompt_sha256": prompt_sha256(prompt_ids)}


@dataclass
class Replay:
    status: str  # "equal", "different", "not_replayable", "model_changed"
    reason: str = ""
    logged: list[int] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    first_difference: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _prompt_messages(reply: Message) -> list[dict[str, str]]:
    first_reply = reply.conversation.messages.filter(role=Message.Role.ASSISTANT).order_by("id").first()
    rows = reply.conversation.messages.filter(id__lt=first_reply.pk).exclude(role=Message.Role.ASSISTANT)
    out = []
    for m in rows.order_by("id"):
        item = {"role": m.role, "content": m.content}
        if m.name:
            item["name"] = m.name
        out.append(item)
    return out


def check(reply: Message, model: Any) -> Replay | None:
    """Why ``reply`` cannot be replayed (a ``Replay`` saying so), or None."""
    params = reply.params or {}
    if reply.role != Message.Role.ASSISTANT or reply.conversation.source != Conversation.Source.API:
        return Replay(
            "not_replayable",
            "Only answers to API calls are replayed (a browser prompt depended on the moment).",
        )
    if reply.conversation.purged_at is not None:
        return Replay("not_replayable", "The conversation was purged.")
    if "model_sha256" not in params or "prompt_sha256" not in params:
        return Replay(
            "not_replayable", "This answer was logged before model and prompt hashes were recorded."
        )
    if params.get("seed") is None and params.get("temperature") != 0:
        return Replay(
            "not_replayable", "The answer was sampled at random (no seed): a replay cannot repeat it."
        )
    if not reply.token_ids:
        return Replay(
            "not_replayable", "The log has no token ids for this answer (a stop string cut it, or it failed)."
        )
    served = model_sha256(model_file(model))
    if served != params["model_sha256"]:
        return Replay(
            "model_changed",
            f"The model file changed since this answer (logged {params['model_sha256'][:12]}…, "
            f"served {served[:12]}…): a replay would not compare like with like.",
        )
    return None


def replay(reply: Message) -> Replay:
    """Run ``reply`` again (blocking: call it from a thread) and compare."""
    from conversations.runtime import get_runtime

    model = get_runtime().get()
    refused = check(reply, model)
    if refused is not None:
        return refused
    params = reply.params
    prompt = model.prompt_ids(_prompt_messages(reply))
    if prompt_sha256(prompt) != params["prompt_sha256"]:
        return Replay(
            "not_replayable",
            "The logged messages no longer give the same prompt ids (template or tokenizer changed).",
        )
    logged = list(reply.token_ids)
    sampling = SamplingParams(
        temperature=params["temperature"],
        top_p=params["top_p"],
        presence_penalty=params.get("presence_penalty", 0.0),
        frequency_penalty=params.get("frequency_penalty", 0.0),
        logit_bias={int(k): v for k, v in (params.get("logit_bias") or {}).items()},
        seed=params.get("seed"),
        stop=tuple(params.get("stop") or ()),
        max_tokens=len(logged),
    )
    jobs = model.scheduler.submit_n(prompt, sampling, reply.choice_index + 1, user_key="replay")
    for job in jobs[:-1]:  # only this choice's seed offset matters
        job.cancel()
    finished = next(e for e in jobs[-1].events(timeout=TIMEOUT) if isinstance(e, Finished))
    replayed = list(finished.token_ids or ())
    first = next((i for i, (a, b) in enumerate(zip(logged, replayed, strict=False)) if a != b), None)
    if first is None and len(logged) != len(replayed):
        first = min(len(logged), len(replayed))
    rows = []
    for i in range(max(len(logged), len(replayed))):
        a = logged[i] if i < len(logged) else None
        b = replayed[i] if i < len(replayed) else None
        rows.append(
            {
                "index": i,
                "logged": a,
                "replayed": b,
                "logged_text": model.tokenizer.decode([a]) if a is not None else "",
                "replayed_text": model.tokenizer.decode([b]) if b is not None else "",
                "same": a == b,
                "first": i == first,
            }
        )
    return Replay("equal" if first is None else "different", "", logged, replayed, first, rows)
