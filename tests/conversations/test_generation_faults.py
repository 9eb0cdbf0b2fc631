"""A generation that fails unexpectedly (not an EngineError) keeps the text it had streamed."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from channels.db import database_sync_to_async

from conversations import actions
from conversations.live import runner
from conversations.models import Message
from inference.engine import CtransformersEngine
from inference.jobs import Delta
from inference.model import ChatModel
from inference.sampling import SamplingParams
from inference.scheduler import Scheduler
from tests.tiny_gguf import write_tiny_llama


class NaNAfter:
    """A real context whose logits turn NaN after ``evals`` evaluations (a corrupt tensor met late):
    the sampler then raises ValueError, which no layer below the scheduler expects."""

    def __init__(self, ctx, evals: int) -> None:
        self.ctx, self.left = ctx, evals

    @property
    def tokens(self) -> list[int]:
        return self.ctx.tokens

    def eval(self, ids: list[int], *, threads: int, batch_size: int) -> None:
        self.ctx.eval(ids, threads=threads, batch_size=batch_size)
        self.left -= 1

    def truncate(self, n: int) -> None:
        self.ctx.truncate(n)

    def logits(self) -> np.ndarray:
        return self.ctx.logits() if self.left > 0 else np.full_like(self.ctx.logits(), np.nan)


@pytest.fixture(scope="module")
def failing_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatModel]:
    folder = tmp_path_factory.mktemp("faults")
    path = write_tiny_llama(folder / "tiny.gguf", context_length=512)
    model = ChatModel.load(path, cache_dir=folder / "cache", slots=1, threads=1)
    model.scheduler.close()
    engine: CtransformersEngine = model.engine
    real_new_context = engine.new_context
    engine.new_context = lambda: NaNAfter(real_new_context(), evals=12)  # type: ignore[method-assign]
    model.scheduler = Scheduler(engine, model.tokenizer, slots=1, threads=1)
    yield model
    model.scheduler.close()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_it_keeps_the_streamed_text_when_a_generation_fails(failing_model, alice, alpha) -> None:
    @database_sync_to_async
    def new_reply() -> Message:
        conversation = actions.start_conversation(alice, alpha)
        actions.add_user_message(conversation, "Tell me a story.")
        return actions.start_assistant_messages(conversation, 1, params={}, prompt_tokens=1)[0]

    reply = await new_reply()
    bias = {i: -100.0 for i in failing_model.tokenizer.special_ids}
    ids = failing_model.prompt_ids([{"role": "user", "content": "Tell me a story."}])
    job = failing_model.scheduler.submit(
        ids, SamplingParams(temperature=1.0, seed=1, max_tokens=100, logit_bias=bias)
    )
    (finished,) = await runner.start(reply.conversation_id, [job], [reply]).wait()

    streamed = "".join(e.text for e in job._history if isinstance(e, Delta))
    assert streamed  # some tokens came out before the failure
    assert finished.reason == "error" and "ValueError" in finished.error
    assert finished.text == streamed and finished.usage.completion_tokens > 0
    saved = await database_sync_to_async(Message.objects.get)(pk=reply.pk)
    assert saved.status == Message.Status.ERROR
    assert saved.content == streamed
