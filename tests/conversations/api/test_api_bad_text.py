"""/v1 refuses text it could neither tokenize nor log (lone surrogates, NULs) with a 400 in OpenAI's
shape naming the field: never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conversations.api.protocol import InvalidRequest, parse_chat_request
from tests.conversations.api.test_api_errors import assert_openai_error


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], **fields}


SURROGATES = [
    (chat(messages=[{"role": "user", "content": "a\ud800b"}]), "messages[0].content"),
    (
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
        "messages[0].content[0].text",
    ),
    (
        chat(
            messages=[
                {"role": "system", "content": "ok"},
                {"role": "user", "content": "hi", "name": "\udc80"},
            ]
        ),
        "messages[1].name",
    ),
    (chat(user="\ud83d"), "user"),
    (chat(stop=["ok", "\ud800"]), "stop[1]"),
    (chat(metadata={"\ud800": "x"}), "metadata.\\ud800"),
    (chat(model="gpt\ud800"), "model"),
]


@pytest.mark.parametrize(("body", "param"), SURROGATES, ids=[p for _, p in SURROGATES])
def test_it_refuses_a_lone_surrogate_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body)
    assert info.value.param == param
    assert "surrogate" in info.value.message
    assert info.value.message.isascii()  # the lone surrogate is named, never echoed (not encodable)


@pytest.mark.parametrize(("body", "param"), SURROGATES[:5], ids=[p for _, p in SURROGATES[:5]])
def test_it_answers_400_to_a_lone_surrogate_over_http(tiny_api_server, body: dict, param: str) -> None:
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as a \\ud800 escape
    assert b"\\ud" in raw
    status, headers, answer = tiny_api_server.request("POST", "/v1/chat/completions", raw)
    assert status == 400, answer
    error = assert_openai_error(status, headers, answer)
    assert error["param"] == param and error["code"] == "invalid_value"
