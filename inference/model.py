"""A loaded chat model: engine, tokenizer, chat template and scheduler, built from one GGUF file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.backend import Backend, ModelFile
from inference.chat import build_prompt_ids
from inference.engine import CtransformersEngine, Engine, EngineContext, EngineError
from inference.gguf import ModelFileError
from inference.prompts import ChatTemplate
from inference.scheduler import Scheduler
from inference.tokenizer import Tokenizer


@dataclass
class ChatModel:
    model_id: str
    engine: ModelFile
    tokenizer: Tokenizer
    template: ChatTemplate
    scheduler: Backend  # inference/backend.py: the local Scheduler, or the inference worker's client

    @classmethod
    def load(
        cls,
        model_path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str],
        context_length: int | None = None,
        slots: int = 1,
        threads: int | None = None,
        queue_max: int = 32,
        prefill_chunk: int = 64,
        token_pace: float | None = None,
        nice: int = 0,
    ) -> ChatModel:
        """``token_pace`` (tests only): every generated token takes at least that many seconds.
        ``nice``: the model's threads run that much below the process (``Scheduler``)."""
        engine: Engine = CtransformersEngine(model_path, cache_dir=cache_dir, context_length=context_length)
        if token_pace:
            from inference.paced import PacedEngine

            engine = PacedEngine(engine, token_pace)
        tokenizer = Tokenizer.from_gguf(engine.info)
        template = ChatTemplate.from_gguf(engine.info)
        scheduler = Scheduler(
            engine,
            tokenizer,
            slots=slots,
            threads=threads,
            queue_max=queue_max,
            prefill_chunk=prefill_chunk,
            nice=nice,
        )
        model = cls(model_id_for(model_path), engine, tokenizer, template, scheduler)
        try:
            # Before anyone can use it: damaged weights load fine and then give NaN on every token.
            check_first_logits(engine, scheduler.slots[0].ctx)
        except BaseException:
            model.close()
            raise
        return model

    def prompt_ids(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return build_prompt_ids(messages, self.template, self.tokenizer, tools)

    def close(self) -> None:
        self.scheduler.close()


def check_first_logits(engine: Engine, ctx: EngineContext) -> None:
    """Evaluate one token on ``ctx`` and check that its logits are finite (``checkmodel`` and every
    load run this); ``ModelFileError`` otherwise. The context is left empty."""
    path = getattr(engine, "model_path", engine.info.name)
    bos = engine.info.bos_id if engine.info.bos_id is not None else 0
    try:
        ctx.eval([bos], threads=1, batch_size=1)
    except EngineError as exc:
        raise ModelFileError(path, f"the model loads but cannot evaluate ({exc})") from None
    finally:
        ctx.truncate(0)
    if not np.isfinite(ctx.logits()).all():
        raise ModelFileError(path, "the model's first logits are not finite (damaged weights?)")


def model_id_for(path: str | os.PathLike[str]) -> str:
    """The public id of a model file: its file name without the .gguf suffix."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
