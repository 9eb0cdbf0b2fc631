"""response_format json_schema over 30 varied schemas x several prompts, greedy and sampled:
every reply that ends (finish_reason "stop") parses and validates; a reply cut by max_tokens
("length") is reported as such. The bulk runs on a tiny random model in process (the grammar alone
makes it valid), a subset on the real model through the API."""

from __future__ import annotations

import json
import math
import sys

import jsonschema_rs
import pytest

from inference.constraints import json_schema_grammar
from inference.sampling import SamplingParams
from tests.chat_runtime import tiny_chat_model


def obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


S = {"type": "string", "maxLength": 16}
SCHEMAS: list[dict] = [
    obj({"name": S}),
    obj({"age": {"type": "integer", "minimum": 0, "maximum": 130}}),
    obj({"price": {"type": "number", "minimum": 0, "maximum": 1000}}),
    obj({"ok": {"type": "boolean"}}),
    obj({"color": {"enum": ["red", "green", "blue"]}}),
    obj({"tags": {"type": "array", "items": S, "maxItems": 3}}),
    obj(
        {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": -5, "maximum": 5},
                "minItems": 1,
                "maxItems": 4,
            }
        }
    ),
    obj({"point": obj({"x": {"type": "number"}, "y": {"type": "number"}})}),
    obj(
        {
            "user": obj(
                {"name": S, "address": obj({"city": S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})}
            )
        }
    ),
    obj({"a": S, "b": {"type": "integer"}}, required=["a"]),
    obj({"a": S, "b": S, "c": S}, required=[]),
    obj(
        {
            "id": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 99},
                    {"type": "string", "maxLength": 8},
                ]
            }
        }
    ),
    obj({"value": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}}),
    obj({"kind": {"const": "event"}, "at": {"type": "integer", "minimum": 0}}),
    obj(
        {
            "items": {
                "type": "array",
                "items": obj({"sku": S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}),
                "maxItems": 2,
            }
        }
    ),
    obj({"level": {"type": "integer", "enum": [1, 2, 3]}}),
    obj({"ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}),
    obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}),
    obj({"date": {"type": "string", "format": "date"}}),
    obj(
        {
            "matrix": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "maxItems": 2,
                },
                "maxItems": 2,
            }
        }
    ),
    obj({"answer": {"enum": ["yes", "no"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}),
    obj({"name": {"type": "string", "minLength": 2, "maxLength": 6}}),
    obj({"x": {"type": ["integer", "null"]}}),
    obj(
        {
            "shape": {
                "anyOf": [
                    obj({"r": {"type": "integer", "minimum": 0, "maximum": 9}}),
                    obj(
                        {
                            "w": {"type": "integer", "minimum": 0, "maximum": 9},
                            "h": {"type": "integer", "minimum": 0, "maximum": 9},
                        }
                    ),
                ]
            }
        }
    ),
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 3},
    {"enum": ["alpha", "beta", "gamma"]},
    obj(
        {"meta": {"$ref": "#/$defs/meta"}},
        **{"$defs": {"meta": obj({"v": {"type": "integer", "minimum": 1, "maximum": 3}})}},
    ),
    obj(
        {"flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}, "note": S},
        required=["flags"],
    ),
    obj({"n": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50}}),
    obj(
        {
            "title": S,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "action"]}, "maxItems": 2},
        }
    ),
]


def parse(text: str) -> object:
    """JSON as written. A number the schema leaves unbounded may be written past float64 (valid
    JSON, valid for the schema: 1e999 is a number); Python would read it as inf, which validates
    as nothing, so it is read as the largest float of its sign instead."""

    def number(literal: str) -> float:
        value = float(literal)
        return value if math.isfinite(value) else math.copysign(sys.float_info.max, value)

    return json.loads(text, parse_float=number)


PROMPTS = ["Describe a person.", "Give me some data about a film.", "What is in the box?"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with tiny_chat_model(tmp_path_factory.mktemp("sweep"), context_length=1024) as model:
        yield model


def test_it_has_thirty_valid_schemas() -> None:
    assert len(SCHEMAS) == 30
    for schema in SCHEMAS:
        jsonschema_rs.meta.validate(schema)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_it_writes_valid_json_for_every_schema_on_the_tiny_model(tiny_model, temperature: float) -> None:
    complete = cut = 0
    for i, schema in enumerate(SCHEMAS):
        validator = jsonschema_rs.validator_for(schema)
        grammar = json_schema_grammar(schema)
        for p, prompt in enumerate(PROMPTS):
            ids = tiny_model.prompt_ids([{"role": "user", "content": prompt}])
            params = SamplingParams(temperature=temperature, seed=i * 10 + p, max_tokens=200, grammar=grammar)
            finished = tiny_model.scheduler.submit(ids, params).wait(120)
            assert finished is not None and finished.reason in ("stop", "length"), finished
            if finished.reason == "length":
                cut += 1
                continue
            complete += 1
            value = parse(finished.text)
            assert validator.is_valid(value), (schema, finished.text)
    print(f"temperature {temperature}: {complete} complete and valid, {cut} cut by max_tokens")
    assert complete >= 2 * (complete + cut) / 3, (complete, cut)  # enough complete ones checked


REAL_SUBSET = [SCHEMAS[i] for i in (0, 4, 8, 11, 14, 29)]


@pytest.mark.model
@pytest.mark.slow
def test_it_writes_valid_json_for_a_subset_on_the_real_model(api_server) -> None:
    import openai

    client = openai.OpenAI(api_key=api_server.keys["alice"], base_url=f"{api_server.url}/v1", max_retries=0)
    complete = 0
    for i, schema in enumerate(REAL_SUBSET):
        for temperature in (0.0, 1.0):
            completion = client.chat.completions.create(
                model="gpt-3.5-turbo",
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": schema, "strict": True},
                },
                max_tokens=100,
                temperature=temperature,
                seed=i,
            )
            choice = completion.choices[0]
            if choice.finish_reason == "length":
                continue
            assert choice.finish_reason == "stop"
            jsonschema_rs.validate(schema, parse(choice.message.content))
            complete += 1
    assert complete >= len(REAL_SUBSET)  # at least half of the 12 replies end within 100 tokens
