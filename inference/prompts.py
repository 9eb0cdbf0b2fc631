"""Chat messages → prompt text, with the model's own chat template.

The template comes from the GGUF file (``tokenizer.chat_template``) and is untrusted: it is
rendered in Jinja's ``ImmutableSandboxedEnvironment`` with the settings and helpers HF transformers
provides (``trim_blocks``, ``lstrip_blocks``, ``raise_exception``, ``strftime_now``, a ``tojson``
that does not HTML-escape, ``{% break %}``/``{% continue %}`` and a no-op ``{% generation %}``
block). Files without a template get ChatML.

A template that renders ``tools`` and assistant ``tool_calls`` has its own tool syntax:
``ChatTemplate.tool_syntax`` finds it by rendering a probe call and reading how the call was
written (see ``ToolSyntax``); ``conversations/api/tool_format.py`` then uses it for the prompt,
the grammar and the parser. Other templates get chatsite's documented Hermes-style format.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .gguf import TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED, GGUFInfo, unicode_to_bytes

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Variables whose ``.name`` is not a message's name (tool and function schemas, tool calls).
_NOT_MESSAGES = frozenset({"tool", "tools", "tool_call", "function", "func", "fn"})


@dataclass(frozen=True)
class ToolSyntax:
    """How a model writes tool calls: each call is ``open`` + ``{"name": ..., "<arguments_key>":
    {...}}`` (JSON with ``, `` and ``: ``) + ``close``, several calls joined by ``between``.

    ``own``: the model's chat template renders the tool list and the calls itself (the messages
    carry ``tool_calls`` and ``role: tool``, the template gets ``tools``); otherwise chatsite writes
    them into the messages in this syntax. ``parallel``: the template can write several calls in
    one message (some refuse to).
    """

    open: str = "<tool_call>"
    close: str = "</tool_call>"
    between: str = "\n"
    arguments_key: str = "arguments"
    parallel: bool = True
    own: bool = False


HERMES = ToolSyntax()
"""chatsite's documented format, for models whose template has no tool syntax."""


class PromptError(TemplateError, ValueError):
    """The chat template cannot be compiled or rendered for these messages."""


class _GenerationBlock(Extension):
    """HF's ``{% generation %}...{% endgeneration %}`` marks assistant text; here it just renders."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise PromptError(f"the chat template refused the messages: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Raises on unsafe attributes, and refuses ``'x' * 10**9`` and huge powers (memory, time)."""

    intercepted_binops = frozenset({"*", "**"})
    max_size = 1_000_000

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja returns an Undefined that renders as ''; a template probing the sandbox is refused.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 256:
            raise SecurityError(f"the exponent {right} is too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(n, int)
                    and len(seq) * n > self.max_size
                ):
                    raise SecurityError("the result of '*' would be too large")
        return super().call_binop(context, operator, left, right)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template. ``render`` is safe to call from several threads."""

    def __init__(self, template: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = template if template else CHATML_TEMPLATE
        self.is_fallback = not template
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = _environment()
        try:
            ast = env.parse(self.source)
            self._template = env.from_string(ast)
        except TemplateError as exc:
            raise PromptError(f"the chat template does not compile: {_describe(exc)}") from None
        self.uses_name = _references_name(ast)
        self.uses_tools = any(n.name == "tools" for n in ast.find_all(nodes.Name))

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ChatTemplate:
        return cls(
            info.chat_template,
            bos_token=_token_text(info, info.bos_id),
            eos_token=_token_text(info, info.eos_id),
        )

    def render(
        self, messages: list[dict], *, add_generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> str:
        """``tools``: the offered tools as OpenAI's ``[{"type": "function", "function": {...}}]``,
        for a template with its own tool syntax (others ignore them)."""
        prepared = [self._prepare(i, m) for i, m in enumerate(messages)]
        try:
            return self._template.render(
                messages=prepared,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=tools or None,
                documents=None,
            )
        except PromptError:
            raise
        except TemplateError as exc:
            raise PromptError(f"the chat template failed to render: {_describe(exc)}") from None
        except Exception as exc:  # a template can divide by zero, index out of range, ...
            raise PromptError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from None

    @cached_property
    def tool_syntax(self) -> ToolSyntax | None:
        """The template's own tool syntax, or None (it has none that chatsite can use)."""
        return _probe_tool_syntax(self) if self.uses_tools else None

    def _prepare(self, index: int, message: Any) -> dict[str, Any]:
        if not isinstance(message, Mapping):
            raise PromptError(f"message {index} is not an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise PromptError(f"message {index} has no role")
        out = dict(message)
        out["content"] = content_text(index, message.get("content"))
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise PromptError(f"message {index}: name must be a string")
        if name and not self.uses_name and role != "tool":  # a tool result names its function
            out["content"] = f"{name}: {out['content']}"
            del out["name"]
        elif not name:
            out.pop("name", None)
        return out


_PROBE_NAME = "chatsite_probe_function"
_PROBE_ARGUMENTS = {"probe_argument": "probe value"}
_PROBE_TEXT = "chatsite probe text"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _PROBE_NAME,
            "description": "A probe.",
            "parameters": {
                "type": "object",
                "properties": {"probe_argument": {"type": "string"}},
                "required": ["probe_argument"],
            },
        },
    }
]


def _probe_call(i: int) -> dict[str, Any]:
    return {
        "id": f"call_probe{i}",
        "type": "function",
        # As HF transformers passes them: the arguments as an object (templates apply tojson).
        "function": {"name": _PROBE_NAME, "arguments": dict(_PROBE_ARGUMENTS)},
    }


def _probe_tool_syntax(template: ChatTemplate) -> ToolSyntax | None:
    """Render a probe conversation with one call, and with two, and read the syntax off the text.

    Usable only if: the tool list reaches the prompt; a call renders as ``open + JSON + close`` in
    the assistant's turn, with ``name`` first and the JSON as ``json.dumps`` writes it (so the
    grammar can hold the model to the same text); ``open`` and ``close`` are not blank (a call
    must be recognisable in free text); a tool result renders."""
    user = {"role": "user", "content": "Hi"}

    def render(messages: list[dict], generation: bool) -> str | None:
        try:
            return template.render(messages, add_generation_prompt=generation, tools=_PROBE_TOOLS)
        except Exception:  # noqa: BLE001  (a template that cannot render the probe has no usable syntax)
            return None

    head = render([user], True)
    plain = render([user, {"role": "assistant", "content": _PROBE_TEXT}], False)
    if head is None or plain is None or _PROBE_NAME not in head or not plain.startswith(head):
        return None
    lead, _, end = plain[len(head) :].partition(_PROBE_TEXT)

    def calls_text(n: int) -> str | None:
        message = {"role": "assistant", "content": "", "tool_calls": [_probe_call(i) for i in range(n)]}
        text = render([user, message], False)
        if text is None or not text.startswith(head + lead) or not text.endswith(end):
            return None
        return text[len(head + lead) : len(text) - len(end)]

    one = calls_text(1)
    if one is None:
        return None
    found = _find_call(one)
    if found is None:
        return None
    start, stop, key = found
    syntax = ToolSyntax(open=one[:start], close=one[stop:], arguments_key=key, own=True)
    if not syntax.open.strip() or not syntax.close.strip():
        return None
    result = {"role": "tool", "tool_call_id": "call_probe0", "name": _PROBE_NAME, "content": _PROBE_TEXT}
    answered = render(
        [user, {"role": "assistant", "content": "", "tool_calls": [_probe_call(0)]}, result], True
    )
    if answered is None or _PROBE_TEXT not in answered:
        return None
    call = one[start:stop]
    two = calls_text(2)
    single = syntax.open + call + syntax.close
    if two is not None and two.startswith(single) and two.endswith(single) and len(two) > 2 * len(single):
        return dataclasses.replace(syntax, between=two[len(single) : -len(single)])
    return dataclasses.replace(syntax, parallel=False)


def _find_call(text: str) -> tuple[int, int, str] | None:
    """Where the probe call's JSON lies in ``text``: (start, end, the arguments' key)."""
    decoder = json.JSONDecoder()
    at = text.find("{")
    while at >= 0:
        try:
            value, stop = decoder.raw_decode(text, at)
        except ValueError:
            value, stop = None, at
        if (
            isinstance(value, dict)
            and len(value) == 2
            and list(value)[0] == "name"
            and value["name"] == _PROBE_NAME
        ):
            key = list(value)[1]
            if value[key] == _PROBE_ARGUMENTS and text[at:stop] == json.dumps(value):
                return at, stop, key
            return None
        at = text.find("{", at + 1)
    return None


def content_text(index: int, content: Any) -> str:
    """A message's content as one string (a list of text parts is joined with newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise PromptError(f"message {index}: only text content parts are supported")
            texts.append(part["text"])
        # As vLLM does: the parts of one message are separate paragraphs.
        return "\n".join(texts)
    raise PromptError(f"message {index}: content must be a string or a list of text parts")


def _references_name(ast: nodes.Template) -> bool:
    """Whether the template reads a message's ``name`` (``m.name``, ``m['name']``, ``'name' in m``)."""

    def on_variable(node: nodes.Node) -> bool:
        return isinstance(node, nodes.Name) and node.name not in _NOT_MESSAGES

    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Call, nodes.Compare)):
        if isinstance(node, nodes.Getattr) and node.attr == "name" and on_variable(node.node):
            return True
        if isinstance(node, nodes.Getitem) and _is_name_const(node.arg) and on_variable(node.node):
            return True
        if (  # m.get('name')
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Getattr)
            and node.node.attr == "get"
            and on_variable(node.node.node)
            and node.args
            and _is_name_const(node.args[0])
        ):
            return True
        if (  # 'name' in m
            isinstance(node, nodes.Compare)
            and _is_name_const(node.expr)
            and any(op.op in ("in", "notin") and on_variable(op.expr) for op in node.ops)
        ):
            return True
    return False


def _is_name_const(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Const) and node.value == "name"


def _describe(exc: TemplateError) -> str:
    lineno = getattr(exc, "lineno", None)
    where = f" (line {lineno})" if lineno else ""
    return f"{type(exc).__name__}: {exc.message or exc}{where}"


def _token_text(info: GGUFInfo, token_id: int | None) -> str:
    if token_id is None or not 0 <= token_id < info.vocab_size:
        return ""
    text = info.tokens[token_id]
    if info.token_types[token_id] in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
        return text
    if info.tokenizer_model == "gpt2":
        return unicode_to_bytes(text).decode("utf-8", errors="replace")
    return text.replace("\u2581", " ")
