"""The OpenAI Chat Completions shapes, declared once: request, response, chunk, models, error.

Bounds and defaults are OpenAI's. ``parse_chat_request`` turns a JSON body into a
``ChatCompletionRequest`` or raises an ``APIError`` subclass that names the offending ``param``;
``APIError.body()`` is the ``{"error": {message, type, param, code}}`` every failure answers with.
No Django here: the HTTP layer (conversations/api) maps these to responses.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    model_serializer,
)

from conversations.api.protocol_tools import (
    MAX_TOOLS,
    ChoiceLogprobs,
    FunctionCallChoice,
    FunctionDefinition,
    ResponseFormat,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
)
from inference.sampling import MAX_STOP_STRINGS
from inference.text import unstorable

MODEL_ALIASES = ("gpt-3.5-turbo", "gpt-3.5-turbo-0301")  # the ids the spec names
MAX_N = 128
# Accepted for old clients, and not offered in /v1/openapi.json: the legacy spellings of tools and
# tool_choice.
LEGACY_FIELDS = ("functions", "function_call")
MAX_STOP = MAX_STOP_STRINGS  # the sampler's limit, one source (inference/sampling.py)
INT64 = 2**63

# --- Errors ------------------------------------------------------------------------------------


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else type(self).code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(APIError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class ServiceUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "model_not_ready"


# --- Request -----------------------------------------------------------------------------------

_Strict = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(BaseModel):
    model_config = _Strict
    type: Literal["text"]
    text: str


class LegacyFunctionCall(BaseModel):
    model_config = _Strict
    name: str
    arguments: str


class ChatMessage(BaseModel):
    """One message of any role; what each role may carry is checked by ``check_messages``."""

    model_config = _Strict
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[TextPart], Field(min_length=1)] | None = None
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    tool_calls: list[ToolCall] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    function_call: LegacyFunctionCall | None = None  # assistant (legacy)
    refusal: str | None = None  # assistant: what the SDK sends back; ignored

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = _Strict
    include_usage: bool | None = None


NonEmpty = Annotated[str, StringConstraints(min_length=1)]
TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. ``null`` means "not given" for every optional field, as in OpenAI."""

    model_config = _Strict

    model: NonEmpty
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[TokenId, Bias] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None
    seed: Annotated[int, Field(ge=-INT64, le=INT64 - 1)] | None = None
    # Harmless metadata of the current API: accepted, and not used.
    metadata: dict[str, Annotated[str, StringConstraints(max_length=512)]] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    functions: Annotated[list[FunctionDefinition], Field(max_length=MAX_TOOLS)] | None = None
    function_call: FunctionCallChoice | None = None

    @property
    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def check_supported(request: ChatCompletionRequest) -> None:
    """Refuse, naming the param, what is well-formed but cannot be honoured as asked."""
    from conversations.api.tool_format import check_tool_request  # the tools' own rules (no cycle at import)

    check_messages(request.messages)
    check_tool_request(request)
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest(
            "logprobs must be true when top_logprobs is given.", param="top_logprobs", code="invalid_value"
        )
    if (
        request.max_tokens is not None
        and request.max_completion_tokens is not None
        and request.max_tokens != request.max_completion_tokens
    ):
        raise InvalidRequest(
            "max_tokens and max_completion_tokens disagree: give one of them.",
            param="max_tokens",
            code="invalid_value",
        )


_ROLE_FIELDS = {
    "system": ("name",),
    "developer": ("name",),
    "user": ("name",),
    "assistant": ("name", "tool_calls", "function_call", "refusal"),
    "tool": ("tool_call_id",),
    "function": ("name",),
}
_OPTIONAL_FIELDS = ("name", "tool_calls", "tool_call_id", "function_call", "refusal")


def check_messages(messages: list[ChatMessage]) -> None:
    """What each role may carry: content everywhere except an assistant message that calls
    tools, ``tool_call_id`` on tool messages, ``tool_calls`` on assistant messages."""
    for i, message in enumerate(messages):
        allowed = _ROLE_FIELDS[message.role]
        for field in _OPTIONAL_FIELDS:
            if field not in allowed and getattr(message, field) is not None:
                raise InvalidRequest(
                    f"Additional properties are not allowed ('{field}' was unexpected) in "
                    f"'messages[{i}]' (a {message.role} message).",
                    param=f"messages[{i}].{field}",
                    code="unknown_parameter",
                )
        calls = message.tool_calls or message.function_call
        if message.content is None and not (message.role == "assistant" and calls):
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].content'.",
                param=f"messages[{i}].content",
                code="missing_required_parameter",
            )
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                param=f"messages[{i}].tool_call_id",
                code="missing_required_parameter",
            )
        if message.role == "function" and not message.name:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].name'.",
                param=f"messages[{i}].name",
                code="missing_required_parameter",
            )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
            "sent was not valid JSON.)",
            code="invalid_json",
        ) from None


def _shown(key: str) -> str:
    """A key as it can be echoed in a JSON answer (a lone surrogate becomes its ``\\udxxx`` escape)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def unstorable_path(value: Any, path: str = "") -> tuple[str, str] | None:
    """Where the first string (or key) that cannot be logged or tokenized is, as
    ``("messages[0].content", "a NUL character (\\u0000)")``."""
    if isinstance(value, str):
        problem = unstorable(value)
        return (path or "body", problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{_shown(str(key))}" if path else _shown(str(key))
            problem = unstorable(str(key))
            if problem:
                return here, problem
            found = unstorable_path(item, here)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = unstorable_path(item, f"{path}[{i}]")
            if found:
                return found
    return None


def check_storable(data: Any) -> None:
    """``InvalidRequest`` naming the first string or key of a body that cannot be logged
    (PostgreSQL text and jsonb cannot hold a NUL) or tokenized (a lone surrogate is no UTF-8)."""
    found = unstorable_path(data)
    if found is not None:
        where, problem = found
        raise InvalidRequest(f"{where} must not contain {problem}.", param=where, code="invalid_value")


def parse_chat_request(data: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; raise ``InvalidRequest`` naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    check_storable(data)
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _invalid_request(exc) from None
    check_supported(request)
    return request


_FIELD_NAMES = frozenset(
    name
    for m in (
        ChatCompletionRequest,
        ChatMessage,
        TextPart,
        StreamOptions,
        ResponseFormat,
        ToolDefinition,
        FunctionDefinition,
        ToolCall,
    )
    for name in m.model_fields
) | {"schema"}


def param_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content", "str")`` -> ``"messages[0].content"``, stopping at union tags."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in _FIELD_NAMES and not path.endswith(("logit_bias", "metadata")):
            path += f".{part}" if path else part
        else:
            break
    return path


_UNION_EXPECTED = {
    "content": "a string or a non-empty array of text parts ({'type': 'text', 'text': ...})",
    "stop": f"a non-empty string or an array of up to {MAX_STOP} non-empty strings",
}


def _invalid_request(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        param = param_path(loc[:-1] + ("",))
        name = loc[-1]
        if len(loc) == 1:
            return InvalidRequest(
                f"Unrecognized request argument supplied: {name}", param=str(name), code="unknown_parameter"
            )
        return InvalidRequest(
            f"Additional properties are not allowed ('{name}' was unexpected) in '{param}'.",
            param=f"{param}.{name}",
            code="unknown_parameter",
        )
    param = param_path(loc)
    if first["type"] == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    # A union (content, stop) fails once per branch: describe the field, not each branch.
    same_field = [e for e in errors if param_path(tuple(e["loc"])) == param]
    if len(same_field) > 1:
        expected = _UNION_EXPECTED.get(param.rpartition(".")[2], "a valid value")
        return InvalidRequest(
            f"Invalid value for '{param}': expected {expected}.", param=param, code="invalid_value"
        )
    return InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value")


# --- Responses ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None  # left out when there are none

    @model_serializer(mode="wrap")
    def _without_empty_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k != "tool_calls" or v is not None}


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ChunkDelta(BaseModel):
    """Only what this chunk adds: the role (first chunk of a choice) or content; ``{}`` at the end."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
