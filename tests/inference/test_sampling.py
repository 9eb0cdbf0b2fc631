from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from inference.sampling import Sampler, SamplingError, SamplingParams, StopMatcher

VOCAB = 49_152


def random_logits(size: int, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(size) * scale).astype(np.float32)


def draw(sampler: Sampler, logits: np.ndarray, times: int) -> np.ndarray:
    return np.array([sampler.sample(logits) for _ in range(times)])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def entropy(probs: np.ndarray) -> float:
    probs = probs[probs > 0]
    return float(-(probs * np.log(probs)).sum())


# -- logit_bias -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0])
def test_it_forces_a_token_with_plus_100_bias_even_when_its_logit_is_lowest(temperature: float) -> None:
    logits = random_logits(VOCAB, scale=3)
    lowest = int(np.argmin(logits))
    sampler = Sampler(SamplingParams(temperature=temperature, logit_bias={lowest: 100}, seed=1), VOCAB)
    assert set(draw(sampler, logits, 50).tolist()) == {lowest}


def test_it_chooses_among_several_forced_tokens_by_their_logits() -> None:
    logits = np.zeros(100, dtype=np.float32)
    logits[[3, 7]] = [-50.0, -50.0 + np.log(3.0)]
    sampler = Sampler(SamplingParams(logit_bias={3: 100, 7: 100}, seed=2), 100)
    counts = Counter(draw(sampler, logits, 4000).tolist())
    assert set(counts) == {3, 7}
    assert counts[7] / 4000 == pytest.approx(0.75, abs=0.03)


def test_it_bans_the_argmax_completely_with_minus_100_even_at_temperature_2() -> None:
    logits = random_logits(1000)
    logits[42] = 300.0  # still far on top if -100 were merely added
    sampler = Sampler(SamplingParams(temperature=2.0, logit_bias={42: -100}, seed=3), 1000)
    assert 42 not in set(draw(sampler, logits, 10_000).tolist())
    assert Sampler(SamplingParams(temperature=0.0, logit_bias={42: -100}), 1000).sample(logits) != 42


def test_it_bans_at_full_vocabulary_size_with_top_p() -> None:
    logits = random_logits(VOCAB)
    top = int(np.argmax(logits))
    sampler = Sampler(SamplingParams(temperature=2.0, top_p=0.5, logit_bias={top: -100}, seed=4), VOCAB)
    assert top not in set(draw(sampler, logits, 300).tolist())


def test_it_adds_moderate_logit_bias_to_the_logits() -> None:
    logits = random_logits(50)
    adjusted = Sampler(SamplingParams(logit_bias={"4": 2.5, 9: -1.0}), 50).adjusted_logits(logits)
    expected = logits.copy()
    expected[4] += 2.5
    expected[9] -= 1.0
    np.testing.assert_allclose(adjusted, expected, rtol=0, atol=1e-6)


def test_it_refuses_to_sample_when_every_token_is_banned() -> None:
    sampler = Sampler(SamplingParams(logit_bias={i: -100 for i in range(5)}), 5)
    with pytest.raises(SamplingError) as error:
        sampler.sample(np.zeros(5, dtype=np.float32))
    assert error.value.param == "logit_bias"


# -- seed ----------------------------------------------------------------------------------------


def test_it_repeats_the_same_sequence_with_the_same_seed() -> None:
    logits = random_logits(VOCAB)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    assert (
        draw(Sampler(params, VOCAB), logits, 30).tolist() == draw(Sampler(params, VOCAB), logits, 30).tolist()
    )


def test_it_gives_different_sequences_for_different_seeds_and_offsets() -> None:
    logits = random_logits(VOCAB)
    first = draw(Sampler(SamplingParams(seed=1), VOCAB), logits, 30).tolist()
    assert draw(Sampler(SamplingParams(seed=2), VOCAB), logits, 30).tolist() != first
    second_choice = Sampler(SamplingParams(seed=1), VOCAB, seed_offset=1)
    assert draw(second_choice, logits, 30).tolist() != first
    again = Sampler(SamplingParams(seed=1), VOCAB, seed_offset=1)
    assert (
        draw(again, logits, 30).tolist()
        == draw(Sampler(SamplingParams(seed=1), VOCAB, seed_offset=1), logits, 30).tolist()
    )


def test_it_accepts_negative_seeds() -> None:
    logits = random_logits(100)
    params = SamplingParams(seed=-7)
    assert draw(Sampler(params, 100), logits, 10).tolist() == draw(Sampler(params, 100), logits, 10).tolist()


# -- temperature and top_p ----------------------------------------------------------------------


def test_it_takes_the_argmax_at_temperature_0() -> None:
    logits = random_logits(VOCAB, seed=5)
    sampler = Sampler(SamplingParams(temperature=0.0), VOCAB)
    assert draw(sampler, logits, 3).tolist() == [int(np.argmax(logits))] * 3


def test_it_never_modifies_the_engine_logits() -> None:
    logits = random_logits(VOCAB)
    before = logits.copy()
    for params in [
        SamplingParams(temperature=0.0, logit_bias={1: 100}),
        SamplingParams(temperature=0.0, frequency_penalty=1.0),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_p=0.8, presence_penalty=1.0, logit_bias={2: -100}),
    ]:
        sampler = Sampler(params, VOCAB)
        sampler.accept(int(np.argmax(logits)))
        sampler.sample(logits)
    np.testing.assert_array_equal(logits, before)


def test_it_samples_from_the_full_distribution_at_top_p_1() -> None:
    logits = random_logits(20, scale=1.5, seed=6)
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=7), 20)
    frequencies = np.bincount(draw(sampler, logits, 10_000), minlength=20) / 10_000
    np.testing.assert_allclose(frequencies, softmax(logits), atol=0.02)
    np.testing.assert_allclose(sampler.probabilities(logits), softmax(logits), rtol=1e-5)


def test_it_restricts_draws_to_the_top_tokens_with_small_top_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.1, 0.05, 0.05])).astype(np.float32)
    only_top = Sampler(SamplingParams(top_p=0.4, seed=8), 5)
    assert set(draw(only_top, logits, 2000).tolist()) == {0}
    top_two = Sampler(SamplingParams(top_p=0.7, seed=9), 5)
    frequencies = np.bincount(draw(top_two, logits, 4000), minlength=5) / 4000
    np.testing.assert_allclose(frequencies, [0.625, 0.375, 0, 0, 0], atol=0.03)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 0.9), (0.5, 0.3), (2.0, 0.95), (1.0, 0.001)])
def test_it_keeps_exactly_the_nucleus_at_full_vocabulary_size(temperature: float, top_p: float) -> None:
    logits = random_logits(VOCAB, scale=2, seed=10)
    weights = np.exp((logits - logits.max()) * np.float32(1 / temperature)).astype(np.float64)
    order = np.argsort(-weights, kind="stable")
    running = np.cumsum(weights[order])
    keep = order[: int(np.searchsorted(running, top_p * running[-1])) + 1]
    expected = np.zeros(VOCAB)
    expected[keep] = weights[keep] / weights[keep].sum()
    sampler = Sampler(SamplingParams(temperature=temperature, top_p=top_p, seed=11), VOCAB)
    probabilities = sampler.probabilities(logits)
    np.testing.assert_array_equal(np.flatnonzero(probabilities), np.sort(keep))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-12)
    assert set(draw(sampler, logits, 200).tolist()) <= set(keep.tolist())


def test_it_keeps_every_token_tied_at_the_nucleus_boundary() -> None:
    logits = np.zeros(1000, dtype=np.float32)
    probabilities = Sampler(SamplingParams(top_p=0.1), 1000).probabilities(logits)
    np.testing.assert_allclose(probabilities, np.full(1000, 1e-3))


def test_it_changes_entropy_with_temperature_as_expected() -> None:
    logits = random_logits(50, scale=2, seed=12)
    measured = {}
    for temperature in [0.5, 1.0, 2.0]:
        sampler = Sampler(SamplingParams(temperature=temperature, seed=13), 50)
        frequencies = np.bincount(draw(sampler, logits, 4000), minlength=50) / 4000
        measured[temperature] = entropy(frequencies)
        assert measured[temperature] == pytest.approx(entropy(softmax(logits / temperature)), abs=0.1)
    assert measured[0.5] < measured[1.0] - 0.2 < measured[2.0] - 0.4


# -- penalties ----------------------------------------------------------------------------------


def test_it_applies_penalties_by_the_openai_formula() -> None:
    logits = random_logits(VOCAB, seed=14)
    generated = [5, 5, 9, 5, 100, 9, 49_151]
    presence, frequency = 0.7, -1.3
    sampler = Sampler(SamplingParams(presence_penalty=presence, frequency_penalty=frequency), VOCAB)
    for token in generated:
        sampler.accept(token)
    expected = logits.astype(np.float64)
    for token, count in Counter(generated).items():
        expected[token] = expected[token] - count * frequency - float(count > 0) * presence
    np.testing.assert_allclose(sampler.adjusted_logits(logits), expected, rtol=0, atol=1e-5)
    assert sampler.adjusted_logits(logits)[5] == pytest.approx(logits[5] - 3 * frequency - presence)


def test_it_penalizes_only_tokens_generated_in_this_completion() -> None:
    logits = random_logits(100)
    fresh = Sampler(SamplingParams(presence_penalty=2.0, frequency_penalty=2.0), 100)
    np.testing.assert_array_equal(fresh.adjusted_logits(logits), logits)


def test_it_lets_the_penalty_change_the_greedy_choice() -> None:
    logits = np.array([3.0, 2.5, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, presence_penalty=1.0), 3)
    assert sampler.sample(logits) == 0
    sampler.accept(0)
    assert sampler.sample(logits) == 1


# -- StopMatcher ----------------------------------------------------------------------------------


def test_it_stops_across_piece_boundaries() -> None:
    matcher = StopMatcher(["o w"])
    assert matcher.push("Hel") == ("Hel", False)
    assert matcher.push("lo wor") == ("l", True)
    assert matcher.push("ld") == ("", True)
    assert matcher.flush() == ""
    assert matcher.text == "Hell"


def test_it_holds_back_partial_prefixes_and_releases_them_when_they_fail() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.push("abcE") == ("abc", False)
    assert matcher.push("N") == ("", False)
    assert matcher.push("x E") == ("ENx ", False)
    assert matcher.flush() == "E"
    assert matcher.text == "abcENx E"


def test_it_never_emits_the_stop_string_or_what_follows() -> None:
    matcher = StopMatcher(["\n\nUser:"])
    emitted = [matcher.push(piece)[0] for piece in ["Sure.", "\n", "\nUs", "er: more", " text"]]
    assert "".join(emitted) + matcher.flush() == "Sure."
    assert matcher.stopped


def test_it_stops_at_the_stop_string_completed_first() -> None:
    matcher = StopMatcher(["world", "lo"])
    assert matcher.push("hello world") == ("hel", True)
    assert StopMatcher(["abcd", "bc"]).push("xabcd") == ("xa", True)
    assert StopMatcher(["bc", "abc"]).push("xabc") == ("x", True)


def test_it_gives_the_same_text_however_the_pieces_are_split() -> None:
    chooser = random.Random(15)
    stops = ["ab", "bca", "cc", "abcab"]
    for _ in range(300):
        text = "".join(chooser.choice("abcx") for _ in range(chooser.randint(0, 12)))
        whole = StopMatcher(stops)
        expected = whole.push(text)[0] + whole.flush()
        cuts = sorted(chooser.sample(range(len(text) + 1), k=min(3, len(text) + 1)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        split = StopMatcher(stops)
        got = "".join(split.push(piece)[0] for piece in pieces) + split.flush()
        assert got == expected == split.text
        assert split.stopped == whole.stopped


def test_it_passes_everything_through_without_stop_strings() -> None:
    matcher = StopMatcher([])
    assert matcher.push("anything") == ("anything", False)
    assert matcher.flush() == ""


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"presence_penalty": -2.1}, "presence_penalty"),
        ({"frequency_penalty": 2.1}, "frequency_penalty"),
        ({"logit_bias": {1: 101}}, "logit_bias"),
        ({"logit_bias": {1: -100.5}}, "logit_bias"),
        ({"logit_bias": {100: 1}}, "logit_bias"),
        ({"logit_bias": {-1: 1}}, "logit_bias"),
        ({"seed": 2**63}, "seed"),
        ({"stop": ("a", "b", "c", "d", "e")}, "stop"),
        ({"stop": ("a", "")}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_it_names_the_param_in_validation_errors(params: dict, field: str) -> None:
    with pytest.raises(SamplingError) as error:
        Sampler(SamplingParams(**params), 100)
    assert error.value.param == field
    assert isinstance(error.value, ValueError)


def test_it_names_logit_bias_for_keys_that_are_not_token_ids() -> None:
    with pytest.raises(SamplingError) as error:
        SamplingParams(logit_bias={"hello": 1})
    assert error.value.param == "logit_bias"


def test_it_accepts_the_edges_of_each_range_and_stays_hashable() -> None:
    params = SamplingParams(
        temperature=2,
        top_p=1,
        presence_penalty=-2,
        frequency_penalty=2,
        logit_bias={"99": -100, 0: 100},
        seed=-(2**63),
        stop="###",
        max_tokens=1,
    )
    params.validate(100)
    assert params.logit_bias == ((0, 100), (99, -100))
    assert params.stop == ("###",)
    assert hash(params) == hash(SamplingParams(**{**params.__dict__, "logit_bias": {0: 100, 99: -100}}))
