"""Raw HTTP: bad requests get OpenAI's error shape, the right status and the param, never a 500 or HTML.

Against a live server with a tiny model (validation happens before the model does any work).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import case_id

HI = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": HI, **fields}


def without(name: str) -> dict[str, Any]:
    body = chat()
    del body[name]
    return body


# (label, body, expected status, param, code)
BAD_BODIES = [
    ("no model", without("model"), 400, "model", "missing_required_parameter"),
    ("no messages", without("messages"), 400, "messages", "missing_required_parameter"),
    ("empty messages", chat(messages=[]), 400, "messages", "invalid_value"),
    ("messages not a list", chat(messages="hi"), 400, "messages", "invalid_value"),
    ("unknown role", chat(messages=[{"role": "robot", "content": "x"}]), 400, "messages[0].role", None),
    ("role missing", chat(messages=[{"content": "x"}]), 400, "messages[0].role", None),
    ("content missing", chat(messages=[{"role": "user"}]), 400, "messages[0].content", None),
    ("content a number", chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", None),
    (
        "content an image part",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "messages[0].content",
        None,
    ),
    (
        "unknown message field",
        chat(messages=[{"role": "user", "content": "x", "tool_calls": []}]),
        400,
        "messages[0].tool_calls",
        "unknown_parameter",
    ),
    (
        "name too long",
        chat(messages=[{"role": "user", "content": "x", "name": "n" * 65}]),
        400,
        "messages[0].name",
        None,
    ),
    ("model not a string", chat(model=3), 400, "model", "invalid_value"),
    ("temperature above 2", chat(temperature=2.5), 400, "temperature", "invalid_value"),
    ("temperature negative", chat(temperature=-0.1), 400, "temperature", "invalid_value"),
    ("temperature a string", chat(temperature="hot"), 400, "temperature", "invalid_value"),
    ("top_p above 1", chat(top_p=1.5), 400, "top_p", "invalid_value"),
    ("n zero", chat(n=0), 400, "n", "invalid_value"),
    ("n above 128", chat(n=129), 400, "n", "invalid_value"),
    ("n a float", chat(n=1.5), 400, "n", "invalid_value"),
    ("n beyond the server", chat(n=100), 400, "n", None),
    ("stream a string", chat(stream="yes"), 400, "stream", "invalid_value"),
    ("five stop sequences", chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", "invalid_value"),
    ("empty stop", chat(stop=""), 400, "stop", "invalid_value"),
    ("stop a number", chat(stop=7), 400, "stop", "invalid_value"),
    ("max_tokens zero", chat(max_tokens=0), 400, "max_tokens", "invalid_value"),
    ("max_tokens a string", chat(max_tokens="5"), 400, "max_tokens", "invalid_value"),
    ("max_completion_tokens negative", chat(max_completion_tokens=-1), 400, "max_completion_tokens", None),
    ("disagreeing limits", chat(max_tokens=3, max_completion_tokens=4), 400, "max_tokens", None),
    ("presence_penalty 3", chat(presence_penalty=3), 400, "presence_penalty", "invalid_value"),
    ("frequency_penalty -3", chat(frequency_penalty=-3), 400, "frequency_penalty", "invalid_value"),
    ("logit_bias key not an id", chat(logit_bias={"hello": 1}), 400, "logit_bias", "invalid_value"),
    ("logit_bias above 100", chat(logit_bias={"5": 101}), 400, "logit_bias", "invalid_value"),
    ("logit_bias id past the vocabulary", chat(logit_bias={"999999": 1}), 400, "logit_bias", None),
    ("seed past 64 bits", chat(seed=2**64), 400, "seed", "invalid_value"),
    ("user not a string", chat(user=12), 400, "user", "invalid_value"),
    ("unknown field", chat(temperatur=1), 400, "temperatur", "unknown_parameter"),
    ("stream_options unknown field", chat(stream_options={"x": True}), 400, "stream_options.x", None),
    ("tool without a function", chat(tools=[{"type": "function"}]), 400, "tools[0].function", None),
    ("tool_choice without tools", chat(tool_choice="auto"), 400, "tool_choice", "invalid_value"),
    ("function_call without functions", chat(function_call="auto"), 400, "function_call", "invalid_value"),
    (
        "tools and functions",
        chat(tools=[{"type": "function", "function": {"name": "f"}}], functions=[{"name": "f"}]),
        400,
        "functions",
        "invalid_value",
    ),
    ("top_logprobs without logprobs", chat(top_logprobs=2), 400, "top_logprobs", "invalid_value"),
    ("top_logprobs 21", chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", "invalid_value"),
    ("response_format yaml", chat(response_format={"type": "yaml"}), 400, "response_format.type", None),
    (
        "json_schema without a schema object",
        chat(response_format={"type": "json_schema"}),
        400,
        "response_format.json_schema",
        "missing_required_parameter",
    ),
    (
        "json_schema with an unsupported keyword",
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}},
            }
        ),
        400,
        "response_format",
        "invalid_schema",
    ),
    (
        "tool message without tool_call_id",
        chat(messages=[{"role": "tool", "content": "21"}]),
        400,
        "messages[0].tool_call_id",
        "missing_required_parameter",
    ),
    ("max_tokens past the context", chat(max_tokens=5000), 400, "messages", "context_length_exceeded"),
    (
        "prompt past the context",
        chat(messages=[{"role": "user", "content": "word " * 3000}]),
        400,
        "messages",
        "context_length_exceeded",
    ),
    ("unknown model", chat(model="gpt-4"), 404, "model", "model_not_found"),
    ("body a list", [1, 2], 400, None, "invalid_type"),
]


def assert_openai_error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert set(data) == {"error"}
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [case[1:] for case in BAD_BODIES],
    ids=[case_id(case[0], 40) for case in BAD_BODIES],
)
def test_it_rejects_a_bad_body(tiny_api_server, body, status, param, code) -> None:
    got, headers, raw = tiny_api_server.request("POST", "/v1/chat/completions", body)
    assert got == status, raw
    error = assert_openai_error(got, headers, raw)
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


# (label, raw body, extra headers, expected status, code)
BAD_TRANSPORT = [
    ("malformed JSON", b'{"model": ', {}, 400, "invalid_json"),
    ("NaN is not JSON", b'{"model": "gpt-3.5-turbo", "temperature": NaN}', {}, 400, "invalid_json"),
    ("not UTF-8", b'{"model": "\xff"}', {}, 400, "invalid_json"),
    ("empty body", b"", {}, 400, "invalid_json"),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, {}, 400, "invalid_json"),
    ("form content type", b"model=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None),
    ("text content type", json.dumps(chat()).encode(), {"Content-Type": "text/plain"}, 415, None),
    ("two megabytes", json.dumps(chat(user="x" * 2_000_000)).encode(), {}, 413, "request_too_large"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [case[1:] for case in BAD_TRANSPORT],
    ids=[case[0] for case in BAD_TRANSPORT],
)
def test_it_rejects_a_bad_transport(tiny_api_server, body, headers, status, code) -> None:
    got, response_headers, raw = tiny_api_server.request(
        "POST", "/v1/chat/completions", body, headers=headers
    )
    assert got == status, raw
    error = assert_openai_error(got, response_headers, raw)
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize(
    "key",
    [None, "", "sk-not-ours", "csk-0123456789ab-wrongsecret", "revoked"],
    ids=["missing", "empty", "foreign", "wrong secret", "revoked"],
)
def test_it_refuses_a_bad_key_with_the_key_masked(tiny_api_server, key) -> None:
    headers = {"Authorization": "Bearer "} if key == "" else {}
    got, response_headers, raw = tiny_api_server.request(
        "POST", "/v1/chat/completions", chat(), key=key or None, headers=headers
    )
    assert got == 401
    error = assert_openai_error(got, response_headers, raw)
    assert error["code"] == "invalid_api_key"
    secret = tiny_api_server.keys.get(key or "", key or "")
    if secret and len(secret) > 16:
        assert secret not in error["message"] and secret[-4:] in error["message"]


def test_it_never_authenticates_v1_with_a_session_cookie(tiny_api_server) -> None:
    got, _, _ = tiny_api_server.request(
        "GET", "/v1/models", key=None, headers={"Cookie": "sessionid=anything; csrftoken=x"}
    )
    assert got == 401


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("PUT", "/v1/models", 405),
        ("GET", "/v1/completions", 404),
        ("GET", "/v1", 404),
        ("GET", "/v1/models/gpt-4", 404),
        ("GET", "/v1/models/a%0Ab", 404),  # a newline in the path: still JSON, not Django's page
        ("POST", "/v1/chat%0A/completions", 404),
    ],
)
def test_it_answers_other_routes_in_the_same_shape(tiny_api_server, method, path, status) -> None:
    got, headers, raw = tiny_api_server.request(method, path)
    assert got == status
    assert_openai_error(got, headers, raw)


def test_it_serves_its_openapi_document_without_a_key(tiny_api_server) -> None:
    got, _, raw = tiny_api_server.request("GET", "/v1/openapi.json", key=None)
    assert got == 200
    document = json.loads(raw)
    assert set(document["paths"]) == {"/v1/chat/completions", "/v1/models", "/v1/models/{model}"}
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert request["properties"]["temperature"]["anyOf"][0] == {"maximum": 2, "minimum": 0, "type": "number"}
