"""Constrained decoding in the sampler (inference/constraints.py), over the real model's tokenizer.

The logits are random, so the grammar alone makes the output valid: a model that knows nothing
of JSON still writes schema-valid JSON, and may only stop where the JSON is complete.
"""

from __future__ import annotations

import json

import jsonschema_rs
import numpy as np
import pytest

from inference.constraints import (
    ConstraintError,
    TokenMask,
    check,
    json_schema_grammar,
    lark_grammar,
    lltokenizer,
)
from inference.sampling import Sampler, SamplingParams
from tests.fixtures_model import default_tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def generate(
    grammar: str, params: SamplingParams, *, seed: int, steps: int = 300, bias: dict[int, float] | None = None
) -> tuple[str, bool]:
    """Sample with random logits until a control token; return (text, ended by a control token)."""
    tokenizer = default_tokenizer()
    rng = np.random.default_rng(seed)
    sampler = Sampler(params, tokenizer.vocab_size, mask=TokenMask(grammar, tokenizer, tokenizer.vocab_size))
    ids: list[int] = []
    for _ in range(steps):
        logits = (rng.standard_normal(tokenizer.vocab_size) * 2).astype(np.float32)
        for token, value in (bias or {}).items():
            logits[token] += value
        token = sampler.sample(logits)
        if tokenizer.is_special(token):
            return tokenizer.decode(ids), True
        ids.append(token)
        sampler.accept(token)
    return tokenizer.decode(ids), False


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_it_writes_only_schema_valid_json_from_random_logits(temperature: float) -> None:
    grammar = json_schema_grammar(PERSON)
    validator = jsonschema_rs.validator_for(PERSON)
    for seed in range(4):
        text, ended = generate(grammar, SamplingParams(temperature=temperature, seed=seed), seed=seed)
        assert ended, text
        validator.validate(json.loads(text))
        assert text.startswith('{"name": "')  # the fixed separators


def test_it_lets_a_control_token_end_the_reply_only_where_the_json_is_complete() -> None:
    tokenizer = default_tokenizer()
    # <|im_end|> pushed to the top of every step: it can only win once the object is closed.
    text, ended = generate(
        json_schema_grammar(PERSON), SamplingParams(temperature=0.0), seed=7, bias={tokenizer.eos_id: 50.0}
    )
    assert ended
    jsonschema_rs.validate(PERSON, json.loads(text))
    assert "<|im_end|>" not in text


def test_it_lets_the_grammar_win_over_a_forcing_logit_bias() -> None:
    tokenizer = default_tokenizer()
    letter_x = tokenizer.encode("x")[0]  # valid only inside the name
    params = SamplingParams(temperature=1.0, seed=3, logit_bias={letter_x: 100})
    text, ended = generate(json_schema_grammar(PERSON), params, seed=3)
    assert ended
    # Forced wherever the grammar allows it, which is inside the name only (after its first
    # token, which must also open the string).
    assert json.loads(text)["name"].endswith("x" * 10)


def test_it_masks_before_temperature_and_top_p() -> None:
    tokenizer = default_tokenizer()
    digits = lark_grammar("start: /[0-9]{3}/")
    logits = np.zeros(tokenizer.vocab_size, dtype=np.float32)
    letter = tokenizer.encode("a")[0]
    logits[letter] = 1000.0  # would take all of top_p's nucleus if the mask came after it
    sampler = Sampler(
        SamplingParams(temperature=2.0, top_p=0.1, seed=1),
        tokenizer.vocab_size,
        mask=TokenMask(digits, tokenizer, tokenizer.vocab_size),
    )
    token = sampler.sample(logits)
    assert tokenizer.decode([token]).isdigit()


def test_it_gives_logprobs_of_the_masked_distribution() -> None:
    tokenizer = default_tokenizer()
    sampler = Sampler(
        SamplingParams(temperature=0.0),
        tokenizer.vocab_size,
        mask=TokenMask(lark_grammar('start: "yes" | "no"'), tokenizer, tokenizer.vocab_size),
    )
    logits = np.random.default_rng(0).standard_normal(tokenizer.vocab_size).astype(np.float32)
    token = sampler.sample(logits)
    entry = sampler.logprobs(logits, token, 20)
    allowed = {tokenizer.decode([i]) for i, _ in entry.top}
    assert allowed <= {"y", "ye", "yes", "n", "no"} and len(entry.top) >= 2
    assert entry.top[0][0] == token and entry.logprob == entry.top[0][1]
    assert sum(np.exp(lp) for _, lp in entry.top) == pytest.approx(1.0, abs=1e-6)


def test_it_refuses_unsupported_schema_keywords_naming_them() -> None:
    tokenizer = default_tokenizer()
    with pytest.raises(ConstraintError, match="uniqueItems"):
        check(json_schema_grammar({"type": "array", "uniqueItems": True}), tokenizer)
    with pytest.raises(ConstraintError, match="look-around"):
        check(json_schema_grammar({"type": "string", "pattern": "(?=a)b"}), tokenizer)
    check(json_schema_grammar(PERSON), tokenizer)


def test_it_builds_the_llguidance_tokenizer_once_per_tokenizer() -> None:
    tokenizer = default_tokenizer()
    first = lltokenizer(tokenizer)
    assert lltokenizer(tokenizer) is first
    assert first.vocab_size == tokenizer.vocab_size
    assert first.is_special_token(tokenizer.eos_id)
