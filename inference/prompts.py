"""Chat messages → prompt text, with the model's own chat template.

The template comes from the GGUF file (``tokenizer.chat_template``) and is untrusted: it is
rendered in Jinja's ``ImmutableSandboxedEnvironment`` with the settings and helpers HF transformers
provides (``trim_blocks``, ``lstrip_blocks``, ``raise_exception``, ``strftime_now``, a ``tojson``
that does not HTML-escape, ``{% break %}``/``{% continue %}`` and a no-op ``{% generation %}``
block). Files without a template get ChatML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
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

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ChatTemplate:
        return cls(
            info.chat_template,
            bos_token=_token_text(info, info.bos_id),
            eos_token=_token_text(info, info.eos_id),
        )

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        prepared = [self._prepare(i, m) for i, m in enumerate(messages)]
        try:
            return self._template.render(
                messages=prepared,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                tools=None,
                documents=None,
            )
        except PromptError:
            raise
        except TemplateError as exc:
            raise PromptError(f"the chat template failed to render: {_describe(exc)}") from None
        except Exception as exc:  # a template can divide by zero, index out of range, ...
            raise PromptError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from None

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
        if name and not self.uses_name:
            out["content"] = f"{name}: {out['content']}"
            del out["name"]
        elif not name:
            out.pop("name", None)
        return out


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
    where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
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
