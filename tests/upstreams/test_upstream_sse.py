"""inference/upstream/sse.py: an upstream chunk's ``model`` rewritten in its own text, exactly or not
at all (no database, no server)."""

from __future__ import annotations

import json
import random

import pytest

from inference.upstream.sse import with_model

CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "served-id",
    "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    "usage": None,
}


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(CHUNK),  # Python's spacing
        json.dumps(CHUNK, separators=(",", ":")),  # compact, as pydantic writes it
        json.dumps({**CHUNK, "model": "naïve/é"}, ensure_ascii=False),
        json.dumps({"model": "first", **{k: v for k, v in CHUNK.items() if k != "model"}}),
        json.dumps({**CHUNK, "choices": [{"index": 0, "delta": {"content": 'say "model": "x" {[\\'}}]}),
        '{ "id" : "a" , "model"\n:\t"served-id" , "choices" : [ ] }',
    ],
)
def test_it_rewrites_the_top_level_model_in_the_upstreams_text(raw: str) -> None:
    out = with_model(raw, "gpt-3.5-turbo")
    assert out is not None
    assert json.loads(out) == {**json.loads(raw), "model": "gpt-3.5-turbo"}
    assert out.startswith(raw[: raw.index('"model"')])  # the upstream's own text up to it


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"choices": [], "model": "after-a-nested-value"}),
        json.dumps({"id": "a{b", "model": "m"}),  # a brace in a string before it: not proven
        json.dumps({"id": 'a"b', "model": "m"}),  # an escape before it
        json.dumps({"choices": [{"model": "nested"}]}),
        json.dumps({"object": "model", "choices": []}),  # "model" as a value
        '{"model": "a", "choices": [], "model": "b"}',  # repeated: a decoder keeps the last
        '{"model": "a", "choices": [], "mod\\u0065l": "b"}',  # the same key, escaped
        json.dumps({"model": None, "choices": []}),
        json.dumps({"model": "a", "choices": [{"delta": {"content": "model"}}]}),
        "[]",
        '{"model": ',
    ],
)
def test_it_declines_what_it_cannot_prove(raw: str) -> None:
    assert with_model(raw, "gpt-3.5-turbo") is None


def test_what_it_rewrites_decodes_as_the_object_with_the_new_model() -> None:
    """Random chunks with awkward strings and nesting: whenever an edit is made, the text decodes
    exactly as the decoded chunk with ``model`` replaced (as a client would read it)."""
    rng = random.Random(12)
    pieces = ['"', "\\", "model", '"model":', "{", "}", "[", "]", ":", ",", "é", "\n", "\\u0065", " ", "a"]

    def text() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))

    def value(depth: int):
        kind = rng.randrange(5 if depth < 3 else 3)
        if kind == 0:
            return text()
        if kind == 1:
            return rng.choice([None, True, 3, -1.5])
        if kind == 2:
            return rng.choice(["model", "served", text()])
        if kind == 3:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return {rng.choice(["model", "content", text()]): value(depth + 1) for _ in range(rng.randrange(3))}

    made = 0
    for _ in range(3000):
        keys = [rng.choice(["id", "model", "choices", "object", text()]) for _ in range(rng.randrange(1, 5))]
        obj = {k: value(0) for k in keys}
        raw = json.dumps(
            obj, ensure_ascii=rng.random() < 0.5, separators=rng.choice([(",", ":"), (", ", ": ")])
        )
        out = with_model(raw, "asked")
        if out is not None:
            made += 1
            assert json.loads(out) == {**json.loads(raw), "model": "asked"}, raw
    assert made > 100  # the common shapes are edited, not all declined
