"""Structured outputs, tools and logprobs against a live server running the real default model,
with the official openai SDK and langchain-openai."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING

import jsonschema_rs
import pytest
from pydantic import BaseModel, Field

from tests.fixtures_model import DEFAULT_MODEL_FILE

if TYPE_CHECKING:
    import openai

pytestmark = [pytest.mark.model, pytest.mark.slow]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class Color(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)
    flag_color: Color


@pytest.fixture(scope="module")
def client(api_server) -> openai.OpenAI:
    import openai  # here: collecting this module (make test-fast deselects it) then imports no SDK

    return openai.OpenAI(api_key=api_server.keys["alice"], base_url=f"{api_server.url}/v1", max_retries=0)


def test_it_returns_a_parsed_pydantic_object_to_the_sdk(client) -> None:
    completion = client.chat.completions.parse(
        model="gpt-3.5-turbo",
        messages=[
            {"role": "developer", "content": "Answer in JSON."},
            {"role": "user", "content": "Describe Paris."},
        ],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    assert 0 <= choice.message.parsed.population_millions <= 100


def test_it_streams_n_schema_valid_choices(client) -> None:
    schema = City.model_json_schema()
    schema["additionalProperties"] = False
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Describe a city."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        max_tokens=120,
        temperature=1.0,
        seed=5,
        n=2,
        stream=True,
    )
    texts, reasons = ["", ""], [None, None]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    validator = jsonschema_rs.validator_for(schema)
    for text, reason in zip(texts, reasons, strict=True):
        if reason == "length":  # cut by max_tokens: only a prefix of valid JSON is promised
            continue
        assert reason == "stop"
        validator.validate(json.loads(text))
    assert "stop" in reasons


def test_it_answers_any_json_object_in_json_mode(client) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=[{"role": "user", "content": "Give me a JSON object with your name."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    choice = completion.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_it_gives_logprobs_of_each_token_whole_and_streamed(client) -> None:
    body = dict(
        model="gpt-3.5-turbo",
        messages=ASK_WEATHER,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    completion = client.chat.completions.create(**body)
    entries = completion.choices[0].logprobs.content
    assert len(entries) == completion.usage.completion_tokens
    assert "".join(e.token for e in entries) == completion.choices[0].message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the most likely one
        assert entry.logprob == pytest.approx(values[0])
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    streamed = []
    for chunk in client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in entries
    ]


def call_of(message) -> tuple[str, dict]:
    assert message.tool_calls and len(message.tool_calls) >= 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    return call.function.name, json.loads(call.function.arguments)


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_it_forces_a_valid_tool_call_and_logs_it(client, api_server, tool_choice) -> None:
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    name, arguments = call_of(choice.message)
    assert name == "get_weather"
    jsonschema_rs.validate(WEATHER_TOOL["function"]["parameters"], arguments)
    reply = api_server.query(
        "SELECT * FROM conversations_message WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )[0]
    logged = json.loads(reply["tools"])
    assert logged["tools"][0]["name"] == "get_weather"
    assert logged["tool_choice"] == tool_choice
    assert [c["id"] for c in logged["tool_calls"]] == [c.id for c in choice.message.tool_calls]


def test_it_streams_the_same_tool_call_as_it_answers_whole(client) -> None:
    body = dict(
        model="gpt-3.5-turbo",
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    whole = client.chat.completions.create(**body).choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    reason = None
    first_pieces = {}
    for chunk in client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            reason = choice.finish_reason or reason
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                first_pieces.setdefault(piece.index, piece)
                call["id"] = piece.id or call["id"]
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert reason == "tool_calls"
    assert all(p.id and p.function.name for p in first_pieces.values())  # id and name come first
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


def test_it_answers_after_a_tool_result(client) -> None:
    messages = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees."},
    ]
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=30
    )
    assert completion.choices[0].message.content and not completion.choices[0].message.tool_calls


# --- langchain-openai ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_model(api_server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model="gpt-3.5-turbo",
        api_key=api_server.keys["alice"],
        base_url=f"{api_server.url}/v1",
        max_retries=0,
        temperature=0,
        max_tokens=120,
    )


def test_it_gives_langchain_structured_output(chat_model) -> None:
    # langchain-openai turns json_schema into function calling for a model named gpt-3.5-turbo
    # (which lacks OpenAI's structured outputs), and a non-strict function's arguments may carry
    # extra keys: name the served model, so that it asks for a strict json_schema through .parse().
    served = chat_model.model_copy(update={"model_name": DEFAULT_MODEL_FILE.removesuffix(".gguf")})
    structured = served.with_structured_output(City, method="json_schema", strict=True)
    city = structured.invoke("Describe Rome.")
    assert isinstance(city, City)


def test_it_runs_a_langchain_tool_loop(chat_model) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"It is sunny and 24 degrees in {city}."

    with_tools = chat_model.bind_tools([get_weather], tool_choice="get_weather")
    messages = [HumanMessage("What is the weather like in Paris today?")]
    answer = with_tools.invoke(messages)
    assert answer.tool_calls and answer.tool_calls[0]["name"] == "get_weather"
    messages.append(answer)
    for call in answer.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    final = chat_model.bind_tools([get_weather]).invoke(messages)
    assert isinstance(final.content, str) and final.content and not final.tool_calls
