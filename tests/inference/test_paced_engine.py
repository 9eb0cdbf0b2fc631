"""The test-only paced engine (CHAT_TEST_ENGINE=paced:<ms>): the tiny model's own tokens, at a
pace that does not depend on the machine; refused when DEBUG is off."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inference.jobs import Delta, Finished
from inference.model import ChatModel
from inference.paced import PacedEngine, parse_test_engine
from inference.sampling import SamplingParams
from tests.chatsite.test_settings import production_env, run_django
from tests.tiny_gguf import write_tiny_llama

N_TOKENS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("paced") / "tiny.gguf", context_length=512)


def generate(model: ChatModel) -> tuple[Finished, list[float]]:
    """A greedy reply of exactly N_TOKENS tokens, and when each of its deltas arrived."""
    no_eos = {i: -100.0 for i in model.tokenizer.special_ids}
    prompt = model.prompt_ids([{"role": "user", "content": "Tell me a story."}])
    job = model.scheduler.submit(
        prompt, SamplingParams(temperature=0, max_tokens=N_TOKENS, logit_bias=no_eos)
    )
    arrivals: list[float] = []
    for event in job.events(timeout=60):
        if isinstance(event, Delta):
            arrivals.append(time.monotonic())
        elif isinstance(event, Finished):
            return event, arrivals
    raise AssertionError("the job did not finish")


def test_it_paces_the_real_engines_tokens(tiny: Path, tmp_path: Path) -> None:
    pace = 0.05
    plain = ChatModel.load(tiny, cache_dir=tmp_path, threads=1)
    paced = ChatModel.load(tiny, cache_dir=tmp_path, threads=1, token_pace=pace)
    try:
        assert isinstance(paced.engine, PacedEngine)
        start = time.monotonic()
        finished, arrivals = generate(paced)
        took = time.monotonic() - start
        expected, _ = generate(plain)
    finally:
        plain.close()
        paced.close()
    # The same model underneath: the same greedy tokens as without the pace.
    assert finished.reason == "length" and finished.usage.completion_tokens == N_TOKENS
    assert finished.text == expected.text
    # Each token waited for the pace: token k (from 0) came no sooner than (k + 1) paces after the
    # start. Lower bounds only, counted from the start: a busy machine can only add to them, while
    # the gap between two arrivals can shrink when the reader is late for the first of them.
    assert took >= N_TOKENS * pace
    assert len(arrivals) == N_TOKENS
    assert all(at - start >= (k + 1) * pace * 0.99 for k, at in enumerate(arrivals))


@pytest.mark.parametrize(
    "value, pace",
    [("paced:20", 0.02), ("paced:2.5", 0.0025), ("paced:10000", 10.0)],
)
def test_it_reads_a_pace_in_milliseconds(value: str, pace: float) -> None:
    assert parse_test_engine(value) == pytest.approx(pace)


@pytest.mark.parametrize("value", ["paced", "paced:", "paced:0", "paced:-5", "paced:nan", "fast:20", "20"])
def test_it_refuses_a_malformed_pace(value: str) -> None:
    with pytest.raises(ValueError, match="paced:<milliseconds per token>"):
        parse_test_engine(value)


@pytest.mark.slow  # a process
def test_it_stops_at_start_up_on_a_malformed_test_engine(tmp_path: Path) -> None:
    done = run_django(tmp_path, CHAT_TEST_ENGINE="paced:0")
    assert done.returncode != 0
    assert "CHAT_TEST_ENGINE='paced:0' is not valid: expected paced:<milliseconds" in done.stderr


@pytest.mark.slow  # a process
def test_it_refuses_the_test_engine_when_debug_is_off(tmp_path: Path) -> None:
    done = run_django(tmp_path, CHAT_TEST_ENGINE="paced:20", **production_env())
    assert done.returncode != 0
    assert "CHAT_TEST_ENGINE is for tests only" in done.stderr
    assert run_django(tmp_path, **production_env()).returncode == 0  # the same, without it, starts
