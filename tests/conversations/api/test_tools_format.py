"""The tool-call format (conversations/api/tool_format.py): the prompt, the grammar of each tool_choice, and
reading calls back from text, whole or streamed. The real model's tokenizer, no model."""

from __future__ import annotations

import json

import pytest
from llguidance import LLMatcher

from conversations.api.protocol import InvalidRequest, parse_chat_request
from conversations.api.tool_format import (
    ArgumentsPiece,
    CallStarted,
    ContentPiece,
    ToolCallParser,
    grammar_for,
    parse_reply,
    prompt_messages,
    tool_plan,
)
from inference.constraints import lltokenizer
from tests.fixtures_model import default_chat_template, default_tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
HI = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'
TWO = CALL + '\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'


def request(**fields):
    return parse_chat_request({"model": "m", "messages": HI, "tools": [WEATHER, ADD], **fields})


def accepts(grammar: str, text: str) -> bool:
    tokenizer = default_tokenizer()
    matcher = LLMatcher(lltokenizer(tokenizer), grammar)
    ids = tokenizer.encode(text)
    return matcher.validate_tokens(ids) == len(ids) and matcher.consume_tokens(ids) and matcher.is_accepting()


@pytest.mark.parametrize(
    ("choice", "texts"),
    [
        ("auto", {"Sunny, I think.": True, CALL: True, "Let me look. " + CALL: True, TWO: True}),
        ("required", {"Sunny, I think.": False, CALL: True, TWO: True}),
        (
            {"type": "function", "function": {"name": "add"}},
            {
                CALL: False,
                '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>': True,
                TWO: False,  # a named function is called once
            },
        ),
    ],
)
def test_it_holds_each_tool_choice_to_its_grammar(choice, texts: dict[str, bool]) -> None:
    grammar = grammar_for(tool_plan(request(tool_choice=choice)), default_tokenizer())
    for text, ok in texts.items():
        assert accepts(grammar, text) is ok, text


def test_it_refuses_a_bad_call_once_auto_has_started_one() -> None:
    grammar = grammar_for(tool_plan(request(tool_choice="auto")), default_tokenizer())
    assert not accepts(
        grammar, 'Sure <tool_call>{"name": "get_weather", "arguments": {"city": 3}}</tool_call>'
    )
    assert not accepts(grammar, 'Sure <tool_call>{"name": "rm", "arguments": {}}</tool_call>')


def test_it_allows_one_call_only_without_parallel_tool_calls() -> None:
    grammar = grammar_for(
        tool_plan(request(tool_choice="required", parallel_tool_calls=False)), default_tokenizer()
    )
    assert accepts(grammar, CALL) and not accepts(grammar, TWO)


def test_it_offers_no_tools_and_no_grammar_with_none() -> None:
    plan = tool_plan(request(tool_choice="none"))
    assert grammar_for(plan, default_tokenizer()) is None
    assert "<tools>" not in json.dumps(prompt_messages(request(tool_choice="none"), plan))


def test_it_renders_tools_calls_and_results_into_the_template() -> None:
    body = parse_chat_request(
        {
            "model": "m",
            "tools": [WEATHER],
            "messages": [
                {"role": "developer", "content": "Be brief."},
                *HI,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city": "Paris", "unit": "C"}',
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
            ],
        }
    )
    messages = prompt_messages(body, tool_plan(body))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert (
        messages[0]["content"].startswith("Be brief.\n\n")
        and '"name": "get_weather"' in messages[0]["content"]
    )
    assert messages[2]["content"] == CALL
    assert (
        messages[3]["content"]
        == '<tool_response>{"name": "get_weather", "content": "21 degrees"}</tool_response>'
    )
    prompt = default_chat_template().render(messages)
    assert "<|im_start|>system\nBe brief." in prompt and "</tool_response><|im_end|>" in prompt


def test_it_maps_the_legacy_functions_onto_tools() -> None:
    body = parse_chat_request(
        {"model": "m", "messages": HI, "functions": [ADD["function"]], "function_call": {"name": "add"}}
    )
    plan = tool_plan(body)
    assert plan.mode == "named" and plan.named == "add" and not plan.parallel
    assert accepts(
        grammar_for(plan, default_tokenizer()),
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"functions": [ADD["function"]]}, "functions"),
        ({"tools": [ADD, ADD]}, "tools"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}},
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
    ],
)
def test_it_refuses_inconsistent_tool_fields_naming_the_param(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        body = request(**fields)
        grammar_for(tool_plan(body), default_tokenizer())
    assert error.value.param == param


@pytest.mark.parametrize(
    "text",
    [
        "Hello <tool",
        "Plain text only.",
        "Look: " + TWO,
        CALL,
        '<tool_call>{"name": "add", "arguments": {"a": {"x": "}"}, "b": 2} }</tool_call>',
    ],
)
def test_it_reads_the_same_calls_whole_or_streamed_char_by_char(text: str) -> None:
    whole = parse_reply(text)
    streamed = ToolCallParser()
    pieces = [p for ch in text for p in streamed.push(ch)] + streamed.finish()
    content = "".join(p.text for p in pieces if isinstance(p, ContentPiece))
    names = [p.name for p in pieces if isinstance(p, CallStarted)]
    arguments: dict[int, str] = {}
    for p in pieces:
        if isinstance(p, ArgumentsPiece):
            arguments[p.index] = arguments.get(p.index, "") + p.text
    assert content == whole.content
    assert names == [c.function.name for c in whole.calls]
    assert [arguments.get(i, "") for i in range(len(names))] == [c.function.arguments for c in whole.calls]
    for call in whole.complete_calls:
        json.loads(call.function.arguments)
    if text == "Hello <tool":
        assert whole.content == text and not whole.calls
