"""Tools and structured outputs: the prompt, the grammar, and reading the calls back.

A model whose chat template has its own tool syntax (``ChatTemplate.tool_syntax``, found by
rendering a probe call: Qwen2.5's and Hermes' templates, for example) gets the tools and the calls
the way its template writes them: the template receives ``tools`` and messages with
``tool_calls`` and ``role: tool``, and the grammar and the parser use the template's call text.
Every other model (SmolLM2's template has no tool syntax) gets one documented format, Hermes-style:

- the tool list goes into the system prompt, one JSON object per line between ``<tools>`` and
  ``</tools>`` (see ``TOOLS_PROMPT``);
- a call is ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``, several calls one per
  line; an assistant message carrying ``tool_calls`` is rendered the same way;
- tool results (``role: tool``, and the legacy ``role: function``) become a user turn of
  ``<tool_response>{"name": ..., "content": ...}</tool_response>`` lines;
- ``developer`` messages are system messages.

The grammar (llguidance Lark, with each call's JSON schema inline) decides what may be written:
``required`` and a named function force calls from the first token; ``auto`` allows free text (or
the response_format's JSON) until ``<tool_call>`` appears, after which only a valid call of a
listed function may follow (a lazy lexeme); ``none`` offers no tools at all.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from conversations.api.protocol_tools import FunctionDefinition, NamedToolChoice, ToolCall
from inference.constraints import (
    JSON_SEPARATORS,
    ConstraintError,
    check,
    json_schema_grammar,
    lark_grammar,
)
from inference.prompts import HERMES, ToolSyntax

if TYPE_CHECKING:
    from conversations.api.protocol import ChatCompletionRequest, ChatMessage
    from inference.tokenizer import Tokenizer

CALL_OPEN, CALL_CLOSE = HERMES.open, HERMES.close
TOOLS_PROMPT = (
    "You can call functions to answer. They are described below as JSON, one per line, between "
    "<tools> and </tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with a line <tool_call>"
    '{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}</tool_call>'
    "{several} The results come back between <tool_response> and </tool_response>."
)
Mode = Literal["none", "auto", "required", "named"]


def _invalid(message: str, param: str, code: str = "invalid_value") -> Exception:
    from conversations.api.protocol import InvalidRequest

    return InvalidRequest(message, param=param, code=code)


# --- The request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """What a request asks of the output: the tools offered and how, and the JSON format."""

    functions: tuple[FunctionDefinition, ...] = ()
    mode: Mode = "none"
    named: str | None = None
    parallel: bool = True
    json_schema: dict[str, Any] | None = None  # response_format json_schema
    json_object: bool = False  # response_format json_object

    @property
    def offers_tools(self) -> bool:
        return self.mode != "none" and bool(self.functions)

    @property
    def record(self) -> dict[str, Any]:
        """What the log keeps of the request's tools and format."""
        out: dict[str, Any] = {}
        if self.functions:
            out["tools"] = [f.model_dump(exclude_none=True) for f in self.functions]
            out["tool_choice"] = (
                {"type": "function", "function": {"name": self.named}} if self.named else self.mode
            )
            out["parallel_tool_calls"] = self.parallel
        if self.json_schema is not None:
            out["response_format"] = {"type": "json_schema", "schema": self.json_schema}
        elif self.json_object:
            out["response_format"] = {"type": "json_object"}
        return out


def check_tool_request(request: ChatCompletionRequest) -> None:
    """The tool fields' own consistency (raises InvalidRequest naming the param)."""
    tool_plan(request)


def tool_plan(request: ChatCompletionRequest) -> ToolPlan:
    if request.tools is not None and request.functions is not None:
        raise _invalid("Give either tools or the legacy functions, not both.", "functions")
    if request.tool_choice is not None and request.function_call is not None:
        raise _invalid("Give either tool_choice or the legacy function_call, not both.", "function_call")
    legacy = request.functions is not None or request.function_call is not None
    functions = tuple(request.functions or ()) if legacy else tuple(t.function for t in request.tools or ())
    choice_param = "function_call" if legacy else "tool_choice"
    choice: Any = request.function_call if legacy else request.tool_choice
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise _invalid("Function names must be unique.", "functions" if legacy else "tools")
    named = None
    if choice is None:
        mode: Mode = "auto" if functions else "none"
    elif isinstance(choice, str):
        mode = choice  # type: ignore[assignment]
    else:
        named = choice.function.name if isinstance(choice, NamedToolChoice) else choice.name
        mode = "named"
    if mode != "none" and not functions:
        raise _invalid(f"{choice_param} is only allowed when tools are specified.", choice_param)
    if named is not None and named not in names:
        raise _invalid(f"{choice_param} names a function that is not in tools: {named!r}.", choice_param)
    fmt = request.response_format
    json_schema, json_object = None, False
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise _invalid(
                "Missing required parameter: 'response_format.json_schema'.",
                "response_format.json_schema",
                "missing_required_parameter",
            )
        json_schema = fmt.json_schema.json_schema if fmt.json_schema.json_schema is not None else {}
    elif fmt is not None and fmt.type == "json_object":
        json_object = True
    return ToolPlan(
        functions=functions,
        mode=mode,
        named=named,
        # A named function is called once (as OpenAI does); the legacy functions never ran in parallel.
        parallel=not legacy and named is None and request.parallel_tool_calls is not False,
        json_schema=json_schema,
        json_object=json_object,
    )


# --- The grammar ---------------------------------------------------------------------------------


def _call_schema(function: FunctionDefinition, arguments_key: str = "arguments") -> str:
    parameters = function.parameters if function.parameters is not None else {"type": "object"}
    return json.dumps(
        {
            "type": "object",
            "properties": {"name": {"const": function.name}, arguments_key: parameters},
            "required": ["name", arguments_key],
            "additionalProperties": False,
            "x-guidance": JSON_SEPARATORS,
        }
    )


def _format_schema(plan: ToolPlan) -> dict[str, Any] | None:
    if plan.json_schema is not None:
        return plan.json_schema
    return {"type": "object"} if plan.json_object else None


def _literal(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def grammar_for(plan: ToolPlan, tokenizer: Tokenizer, syntax: ToolSyntax = HERMES) -> str | None:
    """The checked grammar of the output, or None (free text). Raises InvalidRequest naming the
    param whose schema llguidance cannot compile, with its reason. Calls are written in
    ``syntax``."""
    fmt = _format_schema(plan)
    if not plan.offers_tools:
        if fmt is None:
            return None
        grammar = _checked(lambda: json_schema_grammar(fmt), tokenizer, "response_format")
        return grammar
    offered = [f for f in plan.functions if plan.named is None or f.name == plan.named]
    for function in offered:  # name the tool whose parameters do not compile
        _checked(
            lambda function=function: json_schema_grammar(json.loads(_call_schema(function))),
            tokenizer,
            f"tools[{plan.functions.index(function)}].function.parameters",
        )
    key = syntax.arguments_key
    lines = [f"c{i}: %json {_call_schema(f, key)}" for i, f in enumerate(offered)]
    lines.append("body: (" + " | ".join(f"c{i}" for i in range(len(offered))) + f") {_literal(syntax.close)}")
    lines.append(f"call: {_literal(syntax.open)} body")
    more = f" ({_literal(syntax.between)} call)*" if plan.parallel and syntax.parallel else ""
    if plan.mode == "auto":
        if fmt is None:
            answer = "TEXT"
        else:
            answer = "answer"
            lines.append(f"answer: %json {json.dumps({**fmt, 'x-guidance': JSON_SEPARATORS})}")
        lines.append(f"prefix[lazy]: TEXT {_literal(syntax.open)}")
        lines.insert(0, f"start: {answer} | prefix body{more}")
        lines.append("TEXT: /(.|\\n)*/")
    else:
        lines.insert(0, f"start: call{more}")
    param = "response_format" if plan.mode == "auto" and fmt is not None else "tools"
    return _checked(lambda: lark_grammar("\n".join(lines)), tokenizer, param)


def _checked(build: Any, tokenizer: Tokenizer, param: str) -> str:
    try:
        grammar = build()
        check(grammar, tokenizer)
    except ConstraintError as exc:
        where = "response_format.json_schema.schema" if param == "response_format" else param
        raise _invalid(f"{where} cannot be used: {exc}", param, "invalid_schema") from None
    return grammar


# --- The prompt ------------------------------------------------------------------------------------


def _arguments_value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def format_call(name: str, arguments: str) -> str:
    call = {"name": name, "arguments": _arguments_value(arguments)}
    return CALL_OPEN + json.dumps(call, ensure_ascii=False) + CALL_CLOSE


def prompt_messages(
    request: ChatCompletionRequest, plan: ToolPlan, *, describe_tools: bool = True
) -> list[dict[str, Any]]:
    """The request's messages in chatsite's own format (roles system/user/assistant): what a
    template without a tool syntax gets, and what the log keeps. ``describe_tools``: the tool list
    and the format go into the system prompt."""
    out: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    responses: list[str] = []

    def flush_responses() -> None:
        if responses:
            out.append({"role": "user", "content": "\n".join(responses)})
            responses.clear()

    for message in request.messages:
        if message.role in ("tool", "function"):
            name = message.name if message.role == "function" else names_by_id.get(message.tool_call_id or "")
            result = {"name": name, "content": _arguments_value(message.text())} if name else message.text()
            responses.append(f"<tool_response>{json.dumps(result, ensure_ascii=False)}</tool_response>")
            continue
        flush_responses()
        out.append(_plain(message, names_by_id))
    flush_responses()
    if plan.offers_tools and describe_tools:
        tools = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in offered_tools(plan) or ())
        several = " Several calls go one per line." if plan.parallel else ""
        text = TOOLS_PROMPT.format(tools=tools, several=several)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def offered_tools(plan: ToolPlan) -> list[dict[str, Any]] | None:
    """The tools the model is offered, as a template with a tool syntax gets them."""
    if not plan.offers_tools:
        return None
    offered = [f for f in plan.functions if plan.named is None or f.name == plan.named]
    return [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in offered]


def template_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's messages for a template with its own tool syntax, as HF transformers gives
    them: assistant ``tool_calls`` (arguments as objects), ``role: tool`` results with the
    function's name; ``developer`` is system, the legacy ``function_call``/``role: function`` are
    tool calls and results."""
    out: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in request.messages:
        text = message.text()
        if message.role in ("tool", "function"):
            if message.role == "function":
                name = message.name or ""
            else:
                name = names_by_id.get(message.tool_call_id or "", "")
            result: dict[str, Any] = {"role": "tool", "content": text, "name": name}
            if message.tool_call_id:
                result["tool_call_id"] = message.tool_call_id
            out.append(result)
            continue
        role = "system" if message.role == "developer" else message.role
        item: dict[str, Any] = {"role": role, "content": text}
        if message.name:
            item["name"] = message.name
        calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()]
        if message.function_call is not None:
            calls.append((new_call_id(), message.function_call.name, message.function_call.arguments))
        if calls:
            item["tool_calls"] = [
                {
                    "id": id_,
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments_value(args)},
                }
                for id_, name, args in calls
            ]
            names_by_id.update((id_, name) for id_, name, _ in calls)
        out.append(item)
    return out


def _plain(message: ChatMessage, names_by_id: dict[str, str]) -> dict[str, Any]:
    role = "system" if message.role == "developer" else message.role
    text = message.text()
    calls = [format_call(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
    for call in message.tool_calls or ():
        names_by_id[call.id] = call.function.name
    if message.function_call is not None:
        calls.append(format_call(message.function_call.name, message.function_call.arguments))
    if calls:
        text = "\n".join(([text] if text else []) + calls)
    out: dict[str, Any] = {"role": role, "content": text}
    if message.name:
        out["name"] = message.name
    return out


# --- Reading the calls back ------------------------------------------------------------------------


@functools.cache
def _head(arguments_key: str) -> re.Pattern[str]:
    """The start of a call's JSON up to its arguments (``arguments_key``: "arguments" for most)."""
    key = re.escape(json.dumps(arguments_key))
    return re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*' + key + r"\s*:\s*")


def new_call_id() -> str:
    return f"call_{secrets.token_urlsafe(18)}"


@dataclass
class CallStarted:
    index: int
    id: str
    name: str


@dataclass
class ArgumentsPiece:
    index: int
    text: str


@dataclass
class ContentPiece:
    text: str


Piece = CallStarted | ArgumentsPiece | ContentPiece


@dataclass
class ToolCallParser:
    """Splits a reply's text, as it streams, into content and tool calls (written in ``syntax``).

    ``push`` returns what is certain now: content (a tail that could become ``<tool_call>`` is held
    back), a call's start (index, id and name, once the name is complete), and its arguments in
    fragments (the closing brace of the call object and ``</tool_call>`` are held back and never
    sent). Fed the whole text at once or piece by piece, it gives the same calls.
    """

    syntax: ToolSyntax = HERMES
    _buffer: str = ""
    _state: Literal["text", "head", "arguments", "after"] = "text"
    calls: list[ToolCall] = field(default_factory=list)
    complete: int = 0  # calls whose </tool_call> was seen
    content: str = ""

    def push(self, text: str) -> list[Piece]:
        self._buffer += text
        return list(self._drain())

    def _drain(self) -> Iterator[Piece]:
        while True:
            opener, closer = self.syntax.open, self.syntax.close
            if self._state in ("text", "after"):
                at = self._buffer.find(opener)
                if at < 0:
                    cut = len(self._buffer) - _partial_suffix(self._buffer, opener)
                    emit, self._buffer = self._buffer[:cut], self._buffer[cut:]
                    if emit and self._state == "text":
                        self.content += emit
                        yield ContentPiece(emit)
                    return
                before, self._buffer = self._buffer[:at], self._buffer[at + len(opener) :]
                if before and self._state == "text":
                    self.content += before
                    yield ContentPiece(before)
                self._state = "head"
            if self._state == "head":
                head = _head(self.syntax.arguments_key).match(self._buffer)
                if head is None or head.end() == len(self._buffer):  # more whitespace may follow
                    return
                name = json.loads(f'"{head.group(1)}"')
                self.calls.append(ToolCall(id=new_call_id(), function={"name": name, "arguments": ""}))  # type: ignore[arg-type]
                self._buffer = self._buffer[head.end() :]
                self._state = "arguments"
                yield CallStarted(len(self.calls) - 1, self.calls[-1].id, name)
            if self._state == "arguments":
                index, call = len(self.calls) - 1, self.calls[-1]
                end = self._buffer.find(closer)
                if end >= 0:
                    rest = self._buffer[:end].rstrip()
                    emit = rest[:-1].rstrip() if rest.endswith("}") else rest
                    self._buffer = self._buffer[end + len(closer) :]
                    self._state = "after"
                    self.complete += 1
                else:
                    hold = _closing_tail(self._buffer, closer)
                    emit, self._buffer = self._buffer[:hold], self._buffer[hold:]
                if emit:
                    call.function.arguments += emit
                    yield ArgumentsPiece(index, emit)
                if self._state == "arguments":
                    return

    def finish(self) -> list[Piece]:
        """At the end: the held-back text of a reply that made no call is content after all."""
        if self._state == "text" and self._buffer:
            emit, self._buffer = self._buffer, ""
            self.content += emit
            return [ContentPiece(emit)]
        return []

    @property
    def complete_calls(self) -> list[ToolCall]:
        return self.calls[: self.complete]


def _partial_suffix(text: str, token: str) -> int:
    """The length of the longest tail of ``text`` that is a proper prefix of ``token``."""
    for size in range(min(len(text), len(token) - 1), 0, -1):
        if token.startswith(text[-size:]):
            return size
    return 0


def _closing_tail(buffer: str, closer: str = CALL_CLOSE) -> int:
    """Where the part of ``buffer`` that may be the call's closing ``}`` (and whitespace, and the
    start of ``closer``, ``</tool_call>``) begins: everything before it is surely arguments."""
    brace = buffer.rfind("}")
    if brace >= 0 and closer.lstrip().startswith(buffer[brace + 1 :].lstrip()):
        start = brace
        while start > 0 and buffer[start - 1].isspace():
            start -= 1
        return start
    stripped = buffer.rstrip()
    return len(stripped)  # trailing whitespace may still precede the closing brace


def parse_reply(text: str, syntax: ToolSyntax = HERMES) -> ToolCallParser:
    parser = ToolCallParser(syntax)
    parser.push(text)
    parser.finish()
    return parser


def arguments_fragments(pieces: Sequence[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, ArgumentsPiece))
