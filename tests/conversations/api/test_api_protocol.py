"""The protocol models, the SSE encoder and the OpenAPI document, in process (no server, no model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conversations.api.completions import sampling_params
from conversations.api.http import mask_key
from conversations.api.openapi import openapi_document
from conversations.api.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    ChunkDelta,
    InvalidRequest,
    RateLimited,
    param_path,
    parse_chat_request,
    parse_json_body,
)
from inference.jobs import ContextLengthExceeded
from inference.streaming import DONE, sse

HI = [{"role": "user", "content": "hi"}]


def test_it_accepts_every_field_of_the_spec_and_todays_clients() -> None:
    request = parse_chat_request(
        {
            "model": "gpt-3.5-turbo",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi", "name": "ann"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "temperature": 0.7,
            "top_p": 0.9,
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": "\n\n",
            "max_tokens": 20,
            "presence_penalty": -1.5,
            "frequency_penalty": 2,
            "logit_bias": {"42": -100, "7": 100},
            "user": "script-1",
            "seed": -5,
            "metadata": {"job": "x"},
            "store": False,
            "service_tier": "auto",
            "parallel_tool_calls": True,
            "response_format": {"type": "text"},
            "logprobs": False,
        }
    )
    assert request.n == 2 and request.stop_list == ["\n\n"] and request.completion_limit == 20
    assert request.messages[3].text() == "a\nb"
    assert request.messages[1].name == "ann"


def test_it_treats_null_as_not_given() -> None:
    request = parse_chat_request(
        {"model": "m", "messages": HI, "temperature": None, "n": None, "stop": None, "tools": None}
    )
    assert request.temperature is None and request.n is None and request.stop_list == []


def test_it_takes_max_completion_tokens_as_max_tokens() -> None:
    request = parse_chat_request({"model": "m", "messages": HI, "max_completion_tokens": 9})
    assert request.completion_limit == 9


def test_it_names_nested_params() -> None:
    assert param_path(("messages", 2, "content", "str")) == "messages[2].content"
    assert param_path(("messages", 0, "content", "list[TextPart]", 1, "text")) == "messages[0].content"
    assert param_path(("logit_bias", "model", "[key]")) == "logit_bias"
    assert param_path(("stream_options", "include_usage")) == "stream_options.include_usage"


def test_it_refuses_json_extensions_and_non_objects() -> None:
    for body in (b"NaN", b'{"a": Infinity}', b"\xff", b""):
        with pytest.raises(InvalidRequest):
            parse_json_body(body)
    with pytest.raises(InvalidRequest) as error:
        parse_chat_request([])
    assert error.value.code == "invalid_type"


def test_it_encodes_chunks_as_server_sent_events() -> None:
    def chunk(delta: ChunkDelta, finish: str | None = None) -> dict:
        event = sse(
            ChatCompletionChunk(
                id="chatcmpl-1",
                created=1,
                model="m",
                choices=[ChunkChoice(index=1, delta=delta, finish_reason=finish)],
            )
        )
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and b"\n" not in event[:-2]
        return json.loads(event[len(b"data: ") :])

    first = chunk(ChunkDelta(role="assistant", content=""))
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"] == [
        {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
    ]
    assert chunk(ChunkDelta(content="Hi\n"))["choices"][0]["delta"] == {"content": "Hi\n"}
    last = chunk(ChunkDelta(), "length")["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "length"
    assert DONE == b"data: [DONE]\n\n"


def test_it_shapes_errors_like_openai() -> None:
    error = RateLimited("busy", headers={"Retry-After": "2"})
    assert error.status == 429 and error.headers == {"Retry-After": "2"}
    assert error.body().model_dump() == {
        "error": {"message": "busy", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }


def test_it_masks_keys_in_messages() -> None:
    key = "csk-0123456789ab-" + "s" * 43
    masked = mask_key(key)
    assert masked.startswith("csk-0123") and masked.endswith("ssss") and "s" * 10 not in masked
    assert mask_key("short") == "*****"


def test_it_documents_the_api_from_the_same_models() -> None:
    document = openapi_document()
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert request["additionalProperties"] is False
    assert request["required"] == ["model", "messages"]
    assert {"tools", "tool_choice", "response_format", "logprobs", "top_logprobs"} <= set(
        request["properties"]
    )
    n = request["properties"]["n"]["anyOf"][0]
    assert (n["minimum"], n["maximum"]) == (1, 128)
    assert document["security"] == [{"bearerAuth": []}]
    responses = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "415", "429", "503"} <= set(responses)


class FakeModel(SimpleNamespace):
    """Just what sampling_params needs: the scheduler's budget rule and the vocabulary size."""

    def __init__(self, context_length: int = 100) -> None:
        def resolve_max_tokens(n_prompt: int, max_tokens: int | None) -> int:
            room = context_length - n_prompt
            if max_tokens is not None and max_tokens > room:
                raise ContextLengthExceeded(
                    "too long", prompt_tokens=n_prompt, max_tokens=max_tokens, context_length=context_length
                )
            return max_tokens or room

        super().__init__(
            scheduler=SimpleNamespace(resolve_max_tokens=resolve_max_tokens),
            engine=SimpleNamespace(vocab_size=50),
        )


def test_it_applies_openai_defaults_and_the_rest_of_the_context() -> None:
    params = sampling_params(parse_chat_request({"model": "m", "messages": HI}), FakeModel(100), 30)
    assert (params.temperature, params.top_p, params.max_tokens) == (1.0, 1.0, 70)
    assert params.seed is None and params.stop == () and params.logit_bias == ()


def test_it_takes_top_p_zero_as_greedy() -> None:
    body = parse_chat_request({"model": "m", "messages": HI, "top_p": 0, "temperature": 1.3})
    params = sampling_params(body, FakeModel(), 10)
    assert (params.temperature, params.top_p) == (0.0, 1.0)


def test_it_caps_max_tokens_when_configured(settings) -> None:
    settings.CHAT_MAX_TOKENS_CAP = 8
    params = sampling_params(parse_chat_request({"model": "m", "messages": HI}), FakeModel(), 10)
    assert params.max_tokens == 8


def test_it_names_the_param_the_model_refuses() -> None:
    with pytest.raises(InvalidRequest) as error:
        sampling_params(
            parse_chat_request({"model": "m", "messages": HI, "logit_bias": {"50": 1}}), FakeModel(), 1
        )
    assert error.value.param == "logit_bias"
    with pytest.raises(InvalidRequest) as error:
        sampling_params(parse_chat_request({"model": "m", "messages": HI, "max_tokens": 95}), FakeModel(), 10)
    assert (error.value.param, error.value.code) == ("messages", "context_length_exceeded")


def test_it_answers_503_while_the_model_loads(monkeypatch) -> None:
    from conversations.api.catalog import model_ids, resolve_model
    from conversations.api.protocol import NotFound, ServiceUnavailable
    from conversations.runtime import ModelNotReady, get_runtime

    def loading():
        raise ModelNotReady("the model is still loading")

    monkeypatch.setattr(get_runtime(), "get", loading)
    with pytest.raises(ServiceUnavailable) as error:
        resolve_model("gpt-3.5-turbo")
    assert error.value.status == 503 and error.value.headers == {"Retry-After": "5"}
    with pytest.raises(NotFound) as missing:  # an unknown id is still a 404, loaded or not
        resolve_model("gpt-4")
    assert (missing.value.param, missing.value.code) == ("model", "model_not_found")
    assert model_ids()[1:] == ["gpt-3.5-turbo", "gpt-3.5-turbo-0301"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}], "user": "\x00"}, "user"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["ok", "\x00"]}, "stop[1]"),
    ],
)
def test_it_refuses_nul_characters_naming_the_field(body: dict, param: str) -> None:
    from conversations.api.protocol import InvalidRequest, parse_chat_request

    with pytest.raises(InvalidRequest) as info:
        parse_chat_request({"model": "gpt-3.5-turbo", **body})
    assert info.value.param == param
    assert "NUL" in str(info.value)
