"""A seeded request gives the same tokens whatever slot serves it, whatever that slot's KV cache
holds and whatever runs beside it (the real default model: it is the one that showed the bug)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from inference.jobs import Finished
from inference.model import ChatModel
from inference.sampling import SamplingParams
from tests.fixtures_model import default_model_cache, default_model_path

# The model runs on two threads (the defaults): alone on the cores, or they crawl under xdist.
pytestmark = [pytest.mark.model, pytest.mark.cpu_exclusive]

SYSTEM = (
    "You are a friendly assistant for a team of engineers. Answer in plain words, keep it short, "
    "and when you tell a story, give the characters names and let something surprising happen. "
    "Never use lists unless asked."
)
ASK = "Tell me a story about a cat who lives on a boat."
# Cache-warming prompts: each shares a different part of the seeded prompt (the system prompt and
# part of the question), so a slot that served one holds a prefix that ends somewhere else.
WARMERS = [
    "Tell me a story about a dog.",
    "Tell me a story about a cat who lives in a house.",
    "Tell me",
    "Tell me a story about a cat who lives on a train, please.",
    "What is a boat?",
]
# 8 tokens: with the fix undone (a seeded request reusing the slot's cache), the 20 requests give 3
# different answers and the n=2 calls 2 different pairs (measured in this module's order; with 4
# tokens the 20 requests agreed). A request's cost is mostly its 70-token prefill, done afresh each
# time; the 8 tokens more that 16 gave cost ~10 CPU-s over the module's 40 seeded answers.
SEEDED = SamplingParams(temperature=1.0, top_p=1.0, seed=20240601, max_tokens=8)


@pytest.fixture(scope="module")
def model() -> Iterator[ChatModel]:
    cache = default_model_cache()
    # The defaults: 2 slots sharing 2 threads (a lone evaluation gets both, two get one each).
    loaded = ChatModel.load(default_model_path(), cache_dir=cache, threads=2, slots=2)
    yield loaded
    loaded.close()


def prompt(model: ChatModel, question: str) -> list[int]:
    return model.prompt_ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])


def warm(model: ChatModel, round_: int) -> None:
    """Leave each slot's cache holding some other prompt that shares a prefix with the seeded one."""
    jobs = [
        model.scheduler.submit(
            prompt(model, WARMERS[(round_ + i) % len(WARMERS)]), SamplingParams(max_tokens=3)
        )
        for i in range(2)
    ]
    for job in jobs:
        assert job.wait(120) is not None


def finish(job) -> Finished:
    result = job.wait(120)
    assert result is not None and result.reason == "length", result
    return result


def first_logits(model: ChatModel, ids: list[int], params: SamplingParams) -> np.ndarray:
    """The logits a job's first token is drawn from (one token: the slot evaluates nothing after)."""
    [slot] = model.scheduler.slots[:1]
    for other in model.scheduler.slots[1:]:  # so that slot 0 serves it
        other.ctx.truncate(0)
    slot.ctx.truncate(0)
    slot.ctx.eval(prompt(model, WARMERS[2]), threads=2, batch_size=64)  # a shared prefix, cut elsewhere
    slot.last_used = 0.0
    finish(model.scheduler.submit(ids, SamplingParams(**{**params.__dict__, "max_tokens": 1})))
    return slot.ctx.logits().copy()


def test_it_gives_a_seeded_request_the_same_logits_from_a_warm_and_a_cold_slot(model: ChatModel) -> None:
    seeded = prompt(model, ASK)
    model.scheduler.slots[0].ctx.truncate(0)
    model.scheduler.slots[1].ctx.truncate(0)
    finish(model.scheduler.submit(seeded, SamplingParams(**{**SEEDED.__dict__, "max_tokens": 1})))
    served = next(s for s in model.scheduler.slots if s.ctx.tokens)
    cold = served.ctx.logits().copy()
    warm_ = first_logits(model, seeded, SEEDED)
    assert np.array_equal(cold, warm_), f"max difference {np.abs(cold - warm_).max():g}"


def test_it_repeats_a_seeded_reply_whatever_the_slot_and_its_cache(model: ChatModel) -> None:
    seeded = prompt(model, ASK)
    assert len(seeded) > 64  # longer than one prefill chunk
    answers: list[tuple[int, ...]] = []
    held: set[tuple[int, ...]] = set()  # what the slots held when the seeded requests came
    for round_ in range(10):
        if round_ % 2:
            warm(model, round_)
        held.add(tuple(len(slot.ctx.tokens) for slot in model.scheduler.slots))
        # Two at a time: each evaluation then gets one thread instead of two.
        results = [finish(job) for job in [model.scheduler.submit(seeded, SEEDED) for _ in range(2)]]
        answers += [r.token_ids for r in results]
    assert len(answers) == 20
    assert len(set(answers)) == 1, f"{len(set(answers))} different answers from one seed"
    # The slots held different things when they served it (a seeded request no longer reuses a
    # slot's cache, so the cached-token count is always 0 and cannot show this).
    assert len(held) > 1


def test_it_repeats_each_choice_of_a_seeded_request_with_n(model: ChatModel) -> None:
    seeded = prompt(model, ASK)
    calls: list[tuple[tuple[int, ...], ...]] = []
    for round_ in range(10):
        if round_ % 2 == 0:
            warm(model, round_)
        jobs = model.scheduler.submit_n(seeded, SEEDED, 2)
        calls.append(tuple(finish(job).token_ids for job in jobs))
    assert len(set(calls)) == 1, f"{len(set(calls))} different (choice 0, choice 1) pairs from one seed"
    assert calls[0][0] != calls[0][1]  # the choices are independent draws
