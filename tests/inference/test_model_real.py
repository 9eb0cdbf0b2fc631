"""The real default model (SmolLM2-135M-Instruct Q4_1) end to end through the scheduler."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inference.jobs import Delta, Finished
from inference.model import ChatModel
from inference.sampling import SamplingParams
from tests.fixtures_model import default_model_cache, default_model_path
from tests.helpers import load_reference

pytestmark = pytest.mark.model

GREEDY = load_reference("smollm2-chat-greedy.json")


@pytest.fixture(scope="module")
def model() -> Iterator[ChatModel]:
    cache = default_model_cache()
    loaded = ChatModel.load(default_model_path(), cache_dir=cache, threads=1, slots=1)  # see LiveServer
    yield loaded
    loaded.close()


def run(model: ChatModel, messages: list[dict], params: SamplingParams) -> Finished:
    result = model.scheduler.submit(model.prompt_ids(messages), params).wait(120)
    assert result is not None and result.reason != "error", result
    return result


@pytest.mark.parametrize("case", GREEDY["cases"], ids=lambda c: c["messages"][-1]["content"][:30])
def test_it_reproduces_the_reference_greedy_first_token(model: ChatModel, case: dict) -> None:
    prompt = model.prompt_ids(case["messages"])
    assert prompt == case["prompt_ids"]
    # Cold: whatever the slot held before must not matter.
    model.scheduler.slots[0].ctx.truncate(0)
    ref = case["greedy_ids"]
    result = run(model, case["messages"], SamplingParams(temperature=0, max_tokens=len(ref)))
    assert result.token_ids[0] == ref[0]
    agreed = next(
        (i for i, (a, b) in enumerate(zip(result.token_ids, ref, strict=False)) if a != b), len(ref)
    )
    print(f"greedy prefix agreement {agreed}/{len(ref)}")


def test_it_repeats_a_sampled_reply_with_the_same_seed(model: ChatModel) -> None:
    messages = [{"role": "user", "content": "Name a colour and a fruit."}]
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=24)
    first = run(model, messages, params)
    model.scheduler.slots[0].ctx.truncate(0)  # a cold start gives the same reply as a warm one
    again = run(model, messages, params)
    other = run(model, messages, SamplingParams(temperature=1.0, top_p=0.95, seed=99, max_tokens=24))
    assert again.token_ids == first.token_ids
    assert other.token_ids != first.token_ids


def test_it_streams_japanese_in_whole_characters(model: ChatModel) -> None:
    messages = [{"role": "user", "content": "Write 'thank you' in Japanese characters."}]
    job = model.scheduler.submit(model.prompt_ids(messages), SamplingParams(temperature=0, max_tokens=30))
    events = list(job.events(timeout=120))
    deltas = [e for e in events if isinstance(e, Delta)]
    finished = events[-1]
    assert any(len(d.token_ids) > 1 for d in deltas), "no character was split across tokens"
    # Only a reply cut by max_tokens in the middle of a character may end in a replacement character.
    assert all("\ufffd" not in d.text for d in deltas[:-1])
    assert "\ufffd" not in deltas[-1].text.rstrip("\ufffd")
    assert "".join(d.text for d in deltas) == finished.text == model.tokenizer.decode(finished.token_ids)
    assert any(ord(ch) > 0x3000 for ch in finished.text)


def test_it_reuses_the_cache_across_turns_with_the_real_model(model: ChatModel) -> None:
    messages = [{"role": "user", "content": "What is a prime number?"}]
    first = run(model, messages, SamplingParams(temperature=0.8, seed=5, max_tokens=30))
    messages += [
        {"role": "assistant", "content": first.text, "token_ids": first.token_ids},
        {"role": "user", "content": "Give an example."},
    ]
    second = run(model, messages, SamplingParams(temperature=0, max_tokens=5))
    assert second.timings.cached_tokens >= first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert second.timings.evaluated_tokens <= 16


def test_it_forces_and_bans_tokens_with_logit_bias(model: ChatModel) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    free = run(model, messages, SamplingParams(temperature=0, max_tokens=3))
    banned = run(
        model, messages, SamplingParams(temperature=0, max_tokens=3, logit_bias={free.token_ids[0]: -100})
    )
    assert banned.token_ids[0] != free.token_ids[0]
    forced_id = model.tokenizer.encode(" banana")[0]
    forced = run(model, messages, SamplingParams(temperature=1, max_tokens=3, logit_bias={forced_id: 100}))
    assert forced.token_ids == (forced_id,) * 3
