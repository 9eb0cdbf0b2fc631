"""The API side of tools, structured outputs and logprobs: from a request to its grammar and
prompt messages, and from each choice's text to content, tool calls and logprobs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from conversations.api.protocol import ChatCompletionRequest, Choice, ChunkChoice, ChunkDelta, ResponseMessage
from conversations.api.protocol_tools import (
    ChoiceLogprobs,
    ToolCall,
    ToolCallDelta,
    ToolCallFunctionDelta,
    TopLogprob,
)
from conversations.api.protocol_tools import TokenLogprob as LogprobOut
from conversations.api.tool_format import (
    ArgumentsPiece,
    CallStarted,
    ContentPiece,
    Piece,
    ToolCallParser,
    ToolPlan,
    grammar_for,
    offered_tools,
    parse_reply,
    prompt_messages,
    template_messages,
    tool_plan,
)
from inference.jobs import Delta, Event, Finished
from inference.prompts import HERMES, ChatTemplate, ToolSyntax
from inference.sampling import SamplingParams, TokenLogprob
from inference.tokenizer import Tokenizer


@dataclass
class OutputPlan:
    """What one request asks of its output, decided before it is admitted."""

    tools: ToolPlan
    grammar: str | None
    top_logprobs: int | None  # None: no logprobs
    syntax: ToolSyntax = HERMES  # how the model writes calls

    def apply(self, params: SamplingParams) -> SamplingParams:
        return dataclasses.replace(params, grammar=self.grammar, logprobs=self.top_logprobs)

    @property
    def record(self) -> dict[str, Any]:
        return self.tools.record


@dataclass
class PromptPlan:
    """The prompt's messages as the template gets them (with ``tools`` for a template with its own
    tool syntax), and as the log keeps them (chatsite's own format, readable in review)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    logged: list[dict[str, Any]]


def plan_output(
    body: ChatCompletionRequest, tokenizer: Tokenizer, template: ChatTemplate | None = None
) -> tuple[OutputPlan, PromptPlan]:
    """The output plan (the grammar checked, or InvalidRequest naming the param) and the prompt.
    ``template``: the model's chat template, whose own tool syntax is used when it has one.
    Compiling a grammar can take a while: call it off the event loop."""
    tools = tool_plan(body)
    syntax = template.tool_syntax if template is not None else None
    grammar = grammar_for(tools, tokenizer, syntax or HERMES)
    top = (body.top_logprobs or 0) if body.logprobs else None
    if syntax is None:
        messages = prompt_messages(body, tools)
        prompt = PromptPlan(messages, None, messages)
    else:
        logged = prompt_messages(body, tools, describe_tools=False)
        prompt = PromptPlan(template_messages(body), offered_tools(tools), logged)
    return OutputPlan(tools, grammar, top, syntax or HERMES), prompt


@dataclass
class _ChoiceState:
    parser: ToolCallParser | None
    logprobs: list[LogprobOut] = field(default_factory=list)  # not yet sent (streams)
    all_logprobs: list[LogprobOut] = field(default_factory=list)


class Output:
    """Shapes the choices of one call: tool calls out of the text, and logprobs."""

    def __init__(self, plan: OutputPlan, tokenizer: Tokenizer, n: int) -> None:
        self.plan = plan
        self.tokenizer = tokenizer
        parse = plan.tools.offers_tools
        self.choices = [_ChoiceState(ToolCallParser(plan.syntax) if parse else None) for _ in range(n)]
        self.streamed = False
        self._answers: dict[int, Choice] = {}

    # --- logprobs ---------------------------------------------------------------------------
    def _entry(self, token_id: int, logprob: float) -> TopLogprob:
        data = self.tokenizer.token_bytes(token_id)
        return TopLogprob(token=data.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(data))

    def _logprobs(self, entries: tuple[TokenLogprob, ...]) -> list[LogprobOut]:
        out = []
        for entry in entries:
            chosen = self._entry(entry.token_id, entry.logprob)
            top = [self._entry(i, lp) for i, lp in entry.top]
            out.append(LogprobOut(**chosen.model_dump(), top_logprobs=top))
        return out

    # --- whole answers ----------------------------------------------------------------------
    def record_event(self, index: int, event: Event) -> None:
        """Subscribed to a job (past events are replayed): keeps its logprobs."""
        if isinstance(event, Delta) and event.logprobs and self.plan.top_logprobs is not None:
            self.choices[index].all_logprobs.extend(self._logprobs(event.logprobs))

    def choice(self, index: int, finished: Finished) -> Choice:
        state = self.choices[index]
        logprobs = ChoiceLogprobs(content=state.all_logprobs) if self.plan.top_logprobs is not None else None
        if state.parser is None:
            message = ResponseMessage(content=finished.text)
            return Choice(index=index, message=message, finish_reason=finished.reason, logprobs=logprobs)  # type: ignore[arg-type]
        parser = parse_reply(finished.text, self.plan.syntax)
        calls = parser.complete_calls
        content = parser.content.strip() or None
        message = ResponseMessage(content=content if calls else parser.content, tool_calls=calls or None)
        reason = self.finish_reason(parser, finished)
        answer = Choice(index=index, message=message, finish_reason=reason, logprobs=logprobs)  # type: ignore[arg-type]
        self._answers[index] = answer
        return answer

    def calls(self, index: int, finished: Finished) -> list[ToolCall]:
        """The complete calls of a finished choice, with the ids the client was given."""
        if self.streamed:
            parser = self.choices[index].parser
            return parser.complete_calls if parser is not None else []
        if index not in self._answers:
            self.choice(index, finished)
        return self._answers[index].message.tool_calls or []

    @staticmethod
    def finish_reason(parser: ToolCallParser | None, finished: Finished) -> str:
        if parser is not None and parser.complete and finished.reason == "stop":
            return "tool_calls"
        return finished.reason

    # --- streams ----------------------------------------------------------------------------
    def delta_choices(self, index: int, event: Delta) -> list[ChunkChoice]:
        self.streamed = True
        state = self.choices[index]
        if self.plan.top_logprobs is not None and event.logprobs:
            state.logprobs.extend(self._logprobs(event.logprobs))
        if state.parser is None:
            return [self._chunk(index, ChunkDelta(content=event.text))]
        return self._pieces(index, state.parser.push(event.text))

    def finish_choices(self, index: int, finished: Finished) -> list[ChunkChoice]:
        self.streamed = True
        state = self.choices[index]
        out = self._pieces(index, state.parser.finish()) if state.parser is not None else []
        reason = self.finish_reason(state.parser, finished)
        out.append(self._chunk(index, ChunkDelta(), finish_reason=reason))
        return out

    def _pieces(self, index: int, pieces: list[Piece]) -> list[ChunkChoice]:
        content = "".join(p.text for p in pieces if isinstance(p, ContentPiece))
        calls: list[ToolCallDelta] = []
        for piece in pieces:
            if isinstance(piece, CallStarted):
                calls.append(
                    ToolCallDelta(
                        index=piece.index,
                        id=piece.id,
                        type="function",
                        function=ToolCallFunctionDelta(name=piece.name, arguments=""),
                    )
                )
            elif isinstance(piece, ArgumentsPiece):
                if calls and calls[-1].index == piece.index:
                    last = calls[-1].function
                    last.arguments = (last.arguments or "") + piece.text
                else:
                    calls.append(
                        ToolCallDelta(index=piece.index, function=ToolCallFunctionDelta(arguments=piece.text))
                    )
        if not content and not calls:
            return []
        return [self._chunk(index, ChunkDelta(content=content or None, tool_calls=calls or None))]

    def _chunk(self, index: int, delta: ChunkDelta, finish_reason: str | None = None) -> ChunkChoice:
        state = self.choices[index]
        logprobs = None
        if self.plan.top_logprobs is not None and (state.logprobs or finish_reason is None):
            logprobs, state.logprobs = ChoiceLogprobs(content=state.logprobs), []
        return ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
