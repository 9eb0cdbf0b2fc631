"""A loaded chat model: engine, tokenizer, chat template and scheduler, built from one GGUF file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.chat import build_prompt_ids
from inference.engine import CtransformersEngine, Engine
from inference.prompts import ChatTemplate
from inference.scheduler import Scheduler
from inference.tokenizer import Tokenizer


@dataclass
class ChatModel:
    model_id: str
    engine: Engine
    tokenizer: Tokenizer
    template: ChatTemplate
    scheduler: Scheduler

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
    ) -> ChatModel:
        """``token_pace`` (tests only): every generated token takes at least that many seconds."""
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
        )
        return cls(model_id_for(model_path), engine, tokenizer, template, scheduler)

    def prompt_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        return build_prompt_ids(messages, self.template, self.tokenizer)

    def close(self) -> None:
        self.scheduler.close()


def model_id_for(path: str | os.PathLike[str]) -> str:
    """The public id of a model file: its file name without the .gguf suffix."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
