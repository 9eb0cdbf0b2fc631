"""The scheduler on a tiny real GGUF model: admission, fairness, cancellation, prefix reuse, drain.

The tiny model (tests/tiny_gguf.py) runs through the real ctransformers engine; only its weights are
random. Generation lengths are fixed by banning the control tokens with logit_bias.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference.jobs import ContextLengthExceeded, Delta, Finished, Overloaded, Queued, Started
from inference.model import ChatModel
from inference.sampling import SamplingParams
from inference.threads import CoreBudget
from tests.tiny_gguf import write_tiny_llama


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    return write_tiny_llama(folder / "tiny.gguf", vocab="gpt2", context_length=1024, n_layers=2, n_embd=64)


@pytest.fixture
def make_model(tiny_path: Path, tmp_path: Path) -> Iterator[Callable[..., ChatModel]]:
    models: list[ChatModel] = []

    def make(**kwargs) -> ChatModel:
        # One thread unless a test is about threads: two spin-wait for each other on a busy machine.
        kwargs.setdefault("threads", 1)
        model = ChatModel.load(tiny_path, cache_dir=tmp_path / "cache", **kwargs)
        models.append(model)
        return model

    yield make
    for model in models:
        model.close()


def params(model: ChatModel, **kwargs) -> SamplingParams:
    """Greedy, with the control tokens banned so that a job runs to its max_tokens."""
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("logit_bias", {i: -100 for i in model.tokenizer.special_ids})
    return SamplingParams(**kwargs)


def prompt(model: ChatModel, text: str) -> list[int]:
    return model.prompt_ids([{"role": "user", "content": text}])


def test_it_streams_deltas_that_add_up_to_the_text(make_model) -> None:
    model = make_model()
    job = model.scheduler.submit(prompt(model, "hello there"), params(model, max_tokens=20))
    events = list(job.events(timeout=30))
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    finished = events[-1]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == finished.text
    assert [t for d in deltas for t in d.token_ids] == list(finished.token_ids)
    assert finished.reason == "length"
    assert finished.usage.completion_tokens == 20
    assert model.tokenizer.decode(finished.token_ids) == finished.text


def test_it_refuses_work_beyond_the_queue_before_evaluating_anything(make_model) -> None:
    model = make_model(slots=1, queue_max=1)
    long = params(model, max_tokens=400)
    first = model.scheduler.submit(prompt(model, "one"), long, user_key="a")
    second = model.scheduler.submit(prompt(model, "two"), long, user_key="b")
    depth = model.scheduler.queue_depth
    with pytest.raises(Overloaded):
        model.scheduler.submit(prompt(model, "three"), long, user_key="c")
    assert model.scheduler.queue_depth == depth == 1
    first.cancel()
    second.cancel()
    assert first.wait(10).reason == "cancelled"
    assert second.wait(10).reason == "cancelled"


def test_it_admits_n_choices_all_or_none(make_model) -> None:
    model = make_model(slots=1, queue_max=2)
    blocker = model.scheduler.submit(prompt(model, "busy"), params(model, max_tokens=400))
    with pytest.raises(Overloaded):
        model.scheduler.submit_n(prompt(model, "three choices"), params(model, max_tokens=5), 3)
    assert model.scheduler.queue_depth == 0  # nothing of the refused request was queued
    jobs = model.scheduler.submit_n(prompt(model, "two choices"), params(model, max_tokens=5), 2)
    assert model.scheduler.queue_depth == 2
    blocker.cancel()
    assert [j.wait(30).reason for j in jobs] == ["length", "length"]


def test_it_makes_n_choices_independent_but_reproducible(make_model) -> None:
    model = make_model()
    p = params(model, temperature=1.5, seed=7, max_tokens=12)
    ids = prompt(model, "choices")
    first = [j.wait(30).token_ids for j in model.scheduler.submit_n(ids, p, 2)]
    again = [j.wait(30).token_ids for j in model.scheduler.submit_n(ids, p, 2)]
    assert first == again
    assert first[0] != first[1]


def test_it_serves_users_round_robin(make_model) -> None:
    model = make_model(slots=1, queue_max=10)
    order: list[str] = []
    lock = threading.Lock()

    def track(name: str):
        def listener(event) -> None:
            if isinstance(event, Started):
                with lock:
                    order.append(name)

        return listener

    # The slot is held until every job is queued (else a1 may finish before b1 is even submitted,
    # on a loaded machine, and a2 rightly takes the idle slot).
    blocker = model.scheduler.submit(prompt(model, "busy"), params(model, max_tokens=400), user_key="x")
    next(e for e in blocker.events(timeout=30) if isinstance(e, Started))
    jobs = []
    for name, user in [("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol")]:
        job = model.scheduler.submit(prompt(model, name), params(model, max_tokens=8), user_key=user)
        job.subscribe(track(name))
        jobs.append(job)
    blocker.cancel()
    for job in jobs:
        job.wait(30)
    # alice's first job, then everyone else's before alice's second turn.
    assert order == ["a1", "b1", "c1", "a2", "a3"]


def test_it_tells_queued_jobs_how_many_are_ahead(make_model) -> None:
    model = make_model(slots=1, queue_max=5)
    blocker = model.scheduler.submit(prompt(model, "busy"), params(model, max_tokens=400), user_key="x")
    waiting = [
        model.scheduler.submit(prompt(model, f"w{i}"), params(model, max_tokens=2), user_key=f"u{i}")
        for i in range(3)
    ]
    firsts = [next(e for e in job.events(timeout=5) if isinstance(e, Queued)) for job in waiting]
    assert [q.n_ahead for q in firsts] == [0, 1, 2]
    blocker.cancel()
    last = [e.n_ahead for e in waiting[2].events(timeout=30) if isinstance(e, Queued)]
    assert last == [2, 1, 0]  # it is told as it moves up


def test_it_cancels_with_at_most_one_more_token(make_model) -> None:
    model = make_model()
    job = model.scheduler.submit(prompt(model, "stream"), params(model, max_tokens=500))
    tokens_at_cancel: list[int] = []
    seen: list[int] = []

    def listener(event) -> None:
        if isinstance(event, Delta):
            seen.extend(event.token_ids)
            if len(seen) >= 5 and not tokens_at_cancel:
                tokens_at_cancel.append(len(seen))
                threading.Thread(target=job.cancel).start()  # from another thread, mid-stream

    job.subscribe(listener)
    result = job.wait(30)
    assert result.reason == "cancelled"
    assert result.usage.completion_tokens <= tokens_at_cancel[0] + 2  # the cancel thread's start + 1 token
    assert result.text == model.tokenizer.decode(result.token_ids)


def test_it_stops_within_one_token_of_a_cancel_seen_in_the_stream(make_model) -> None:
    model = make_model()
    job = model.scheduler.submit(prompt(model, "stream"), params(model, max_tokens=500))

    def listener(event) -> None:
        if isinstance(event, Delta) and len(event.token_ids) and not job.cancelled:
            job.cancel()  # runs in the slot thread, between two tokens

    job.subscribe(listener)
    result = job.wait(30)
    assert result.reason == "cancelled"
    assert result.usage.completion_tokens <= 2


def test_it_honours_a_cancel_during_a_long_prefill(make_model) -> None:
    model = make_model(prefill_chunk=8)
    ids = prompt(model, "word " * 300)
    job = model.scheduler.submit(ids, params(model, max_tokens=5))
    job.subscribe(lambda e: job.cancel() if isinstance(e, Started) else None)
    result = job.wait(30)
    assert result.reason == "cancelled"
    assert result.usage.completion_tokens == 0
    assert len(model.scheduler.slots[0].ctx.tokens) < len(ids) - 8


def test_it_cancels_a_queued_job_without_running_it(make_model) -> None:
    model = make_model(slots=1, queue_max=2)
    blocker = model.scheduler.submit(prompt(model, "busy"), params(model, max_tokens=400))
    queued = model.scheduler.submit(prompt(model, "later"), params(model, max_tokens=5))
    queued.cancel()
    result = queued.wait(5)
    assert result.reason == "cancelled" and result.usage.completion_tokens == 0
    assert model.scheduler.queue_depth == 0
    assert not any(isinstance(e, Started) for e in queued.events(timeout=1))
    blocker.cancel()


def test_it_evaluates_only_the_new_tokens_of_the_next_turn(make_model) -> None:
    model = make_model()
    messages = [{"role": "user", "content": "first question"}]
    first = model.scheduler.submit(
        model.prompt_ids(messages), SamplingParams(temperature=0, max_tokens=10)
    ).wait(30)
    messages += [
        {"role": "assistant", "content": first.text, "token_ids": first.token_ids},
        {"role": "user", "content": "second question"},
    ]
    ids = model.prompt_ids(messages)
    cached_before = list(model.scheduler.slots[0].ctx.tokens)
    second = model.scheduler.submit(ids, SamplingParams(temperature=0, max_tokens=3)).wait(30)
    reused = len(cached_before)
    assert ids[:reused] == cached_before  # the slot held a prefix of the new prompt
    assert second.timings.cached_tokens == reused
    assert second.timings.evaluated_tokens == len(ids) - reused
    # Only the new turn was evaluated: at most the closing of the reply and the new user message.
    new_turn = model.tokenizer.encode(
        "<|im_end|>\n<|im_start|>user\nsecond question<|im_end|>\n<|im_start|>assistant\n"
    )
    assert second.timings.evaluated_tokens <= len(new_turn) + 1


@pytest.mark.skipif(sys.platform != "linux", reason="threads have their own priority on Linux only")
def test_the_models_threads_run_below_the_rest_of_the_process(make_model) -> None:
    """The slot threads (and so the threads ggml starts from them for each evaluation, which
    inherit it) run ``nice`` below the process, whose other threads keep their priority."""
    ours = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, ours)
    model = make_model(slots=2, nice=3)
    jobs = [
        model.scheduler.submit(prompt(model, f"job {i}"), params(model, max_tokens=20), user_key=str(i))
        for i in range(2)
    ]
    assert [job.wait(30).reason for job in jobs] == ["length", "length"]  # each slot has run
    for slot in model.scheduler.slots:
        assert os.getpriority(os.PRIO_PROCESS, slot.thread.native_id) == min(19, base + 3)
    assert os.getpriority(os.PRIO_PROCESS, ours) == base


def test_it_gives_a_lone_slot_every_core_and_shares_them_between_slots() -> None:
    budget = CoreBudget(4)
    budget.activate()
    assert budget.acquire() == 4
    budget.release(4)
    budget.activate()
    a, b = budget.acquire(), budget.acquire()
    assert (a, b) == (2, 2)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(budget.acquire()))
    t.start()
    # Waits: no core is free. The thread is parked in the budget's condition (its waiter list,
    # a CPython detail, is the only sign of it), having found no core free.
    deadline = time.monotonic() + 10
    while not budget._cond._waiters and t.is_alive() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.001)
    assert budget._cond._waiters and got == []  # type: ignore[attr-defined]
    budget.release(a)
    t.join(2)
    assert got == [2] and budget.peak == 4


def test_it_refuses_a_prompt_that_cannot_fit_in_the_context(make_model) -> None:
    model = make_model(context_length=128)
    ids = prompt(model, "fits")
    with pytest.raises(ContextLengthExceeded) as info:
        model.scheduler.submit(ids, params(model, max_tokens=128))
    assert info.value.prompt_tokens == len(ids)
    with pytest.raises(ContextLengthExceeded):
        model.scheduler.submit(ids * 20, params(model))


def test_it_defaults_max_tokens_to_the_rest_of_the_context(make_model) -> None:
    model = make_model(context_length=96)
    ids = prompt(model, "fill the context")
    result = model.scheduler.submit(ids, params(model)).wait(60)
    assert result.reason == "length"
    assert result.usage.completion_tokens == 96 - len(ids)
    assert len(model.scheduler.slots[0].ctx.tokens) <= 96


def test_it_never_emits_a_stop_string(make_model) -> None:
    model = make_model()
    ids = prompt(model, "stop test")
    free = model.scheduler.submit(ids, params(model, max_tokens=30)).wait(30)
    stop = free.text[10:13]
    assert len(stop) == 3
    result = model.scheduler.submit(ids, params(model, max_tokens=30, stop=(stop,))).wait(30)
    assert result.reason == "stop"
    assert stop not in result.text
    assert result.text == free.text[: free.text.index(stop)]
    assert result.token_ids is None  # the ids no longer reproduce the cut text


def test_it_drains_finishing_running_work_and_refusing_new(make_model) -> None:
    # At a fixed pace (100 tokens: at least 2 s) the running job cannot end before drain() is
    # called, whatever the machine's speed: unpaced, the tiny model's 30 tokens sometimes ended
    # first on a busy machine, and the queued job ran to "length" instead of being cancelled.
    model = make_model(slots=1, queue_max=3, token_pace=0.02)
    running = model.scheduler.submit(prompt(model, "run"), params(model, max_tokens=100))
    next(e for e in running.events(timeout=10) if isinstance(e, Delta))
    queued = model.scheduler.submit(prompt(model, "wait"), params(model, max_tokens=30))
    summary = model.scheduler.drain(timeout=30)
    assert running.result.reason == "length"
    assert queued.result.reason == "cancelled"
    assert summary == {"queued_cancelled": 1, "finished": 1, "cancelled": 0}
    with pytest.raises(Overloaded):
        model.scheduler.submit(prompt(model, "late"), params(model, max_tokens=3))


def test_it_cancels_what_outlives_the_drain_timeout(make_model) -> None:
    model = make_model(slots=1, token_pace=0.02)  # 900 tokens: 18 s, far beyond the drain's 0.05 s
    running = model.scheduler.submit(prompt(model, "long"), params(model, max_tokens=900))
    next(e for e in running.events(timeout=10) if isinstance(e, Delta))
    summary = model.scheduler.drain(timeout=0.05)
    assert summary["cancelled"] == 1
    assert running.result.reason == "cancelled"
    assert running.result.text  # the partial text is kept


def test_it_holds_back_an_incomplete_utf8_character(make_model) -> None:
    model = make_model()
    # Force a lead byte of a 4-byte character at every step. The first is held back until the next
    # token shows it can never complete; only then does it become a replacement character.
    lead = next(i for i in range(model.tokenizer.vocab_size) if model.tokenizer.token_bytes(i) == b"\xf0")
    bias = {i: -100 for i in model.tokenizer.special_ids} | {lead: 100}
    job = model.scheduler.submit(
        prompt(model, "emoji"), SamplingParams(temperature=0, max_tokens=4, logit_bias=bias)
    )
    deltas = [e for e in job.events(timeout=30) if isinstance(e, Delta)]
    assert deltas[0].token_ids == (lead, lead)  # nothing was sent after the first byte alone
    assert "".join(d.text for d in deltas) == "\ufffd" * 4


def test_it_never_emits_a_nul_character(make_model) -> None:
    # PostgreSQL text cannot hold NUL: a model that produces byte 0 streams U+FFFD instead.
    model = make_model()
    nul = next(i for i in range(model.tokenizer.vocab_size) if model.tokenizer.token_bytes(i) == b"\x00")
    bias = {i: -100 for i in model.tokenizer.special_ids} | {nul: 100}
    result = model.scheduler.submit(
        prompt(model, "nul"), SamplingParams(temperature=0, max_tokens=3, logit_bias=bias)
    ).wait(30)
    assert result.text == "\ufffd" * 3


def test_it_evaluates_a_prompt_that_fits_one_chunk_in_one_pass(make_model) -> None:
    """The last prompt token is evaluated with the rest, not alone: one pass less before the first
    token (issue 15). Longer prompts, and seeded ones, are cut into chunks the same way."""
    model = make_model(slots=1, prefill_chunk=64)
    ctx = model.scheduler.slots[0].ctx
    passes: list[int] = []
    evaluate = ctx.eval

    def counting(ids, **kwargs) -> None:
        passes.append(len(ids))
        evaluate(ids, **kwargs)

    ctx.eval = counting
    short = prompt(model, "a short question")
    assert len(short) <= 64
    assert model.scheduler.submit(short, params(model, max_tokens=1)).wait(30).reason == "length"
    assert passes == [len(short)]

    passes.clear()
    ctx.truncate(0)
    long = prompt(model, "word " * 100)
    assert model.scheduler.submit(long, params(model, max_tokens=1, seed=7)).wait(30).reason == "length"
    assert passes == [64] * (len(long) // 64) + ([len(long) % 64] if len(long) % 64 else [])


def test_the_benchmarks_raw_engine_probe_times_the_jobs_own_work_on_its_slot(
    make_model, settings, tmp_path
) -> None:
    """bench.ttft's baseline: after each job, the slot re-evaluates what the job evaluated (the
    prompt after the prefix it found cached) and writes the time to the trace; the slot then holds
    the prompt again and serves the next job as before."""
    from conversations.ttft import raw_engine_probe

    settings.CHAT_TTFT_TRACE = str(tmp_path / "ttft.jsonl")
    model = make_model(slots=1)
    probed = make_model(slots=1)
    probed.scheduler.after_job = raw_engine_probe(threads=1, batch_size=64, settle=0.0)
    ids = prompt(model, "The raw engine's own time to its first token")
    answers = []
    for each in (model, probed):
        first = each.scheduler.submit(ids, params(each, max_tokens=6))
        first.wait(60)
        second = each.scheduler.submit(ids, params(each, max_tokens=6))  # after the probe: one slot
        second.wait(60)
        answers.append((first.result.token_ids, second.result.token_ids, second.cached_tokens))
    assert answers[0] == answers[1]  # the probe changed nothing the jobs see
    probed.scheduler.submit(ids, params(probed, max_tokens=1)).wait(60)  # after the second's probe
    lines = [json.loads(line) for line in (tmp_path / "ttft.jsonl").read_text().splitlines()][:2]
    assert [line["job"] for line in lines] == [first.id, second.id]
    assert [line["cached"] for line in lines] == [first.cached_tokens, second.cached_tokens]
    assert second.cached_tokens > 0 and all(line["raw_s"] > 0 for line in lines)
