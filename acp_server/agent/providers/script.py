"""``script:PATH``: a deterministic agent read from a YAML or JSON file.

IDE-plugin authors drive their integration tests with it: every thought, message
chunk, plan and tool call is fixed by the file, so every ACP update can be asserted.

Which part of the file answers a model call follows from the request alone, so the
provider keeps no state: the turn is the number of user messages minus one, and the
model call within the turn is the number of assistant messages since the last user
message. Each ``tool_call`` (or ``tool_calls``) step ends one model call with
``tool_use``; the agent loop runs the tools and calls again, which continues with the
next step. Tool call ids are ``call_<turn>_<step>`` (both counted from 1, as a person
reads the file), with ``_<n>`` appended for each call of a ``tool_calls`` step.

The JSON Schema in ``schemas/script-provider.schema.json`` is generated from the
models below; after changing them, run::

    .venv/bin/python -m acp_server.agent.providers.script schemas/script-provider.schema.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.lowlevel
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from acp_server.agent.providers.base import (
    AssistantMessage,
    Finish,
    FinishReason,
    Message,
    ModelRequest,
    PlanUpdate,
    ProviderError,
    ProviderErrorKind,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallReady,
    UsageReport,
    UserMessage,
)
from acp_server.agent.providers.echo import word_chunks
from acp_server.agent.providers.usage import estimated_usage
from acp_server.config.settings import ProviderSettings
from acp_server.sessions.model import Usage

# ---- the file format -----------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThoughtStep(_Strict):
    thought: str | list[str] = Field(
        description="Thinking shown to the user: a string streamed word by word, or a "
        "list of exact chunks."
    )


class MessageStep(_Strict):
    message: str = Field(description="Agent text, streamed word by word.")


class ChunksStep(_Strict):
    chunks: list[str] = Field(description="Agent text streamed in exactly these chunks.")


class PlanEntry(_Strict):
    content: str
    priority: Literal["high", "medium", "low"] = "medium"
    status: Literal["pending", "in_progress", "completed"] = "pending"


class PlanStep(_Strict):
    plan: list[PlanEntry] = Field(description="The complete plan, replacing any earlier one.")


class ToolCallSpec(_Strict):
    name: str = Field(description="A tool the agent offers, e.g. read_file or write_file.")
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, description="Default: call_<turn>_<step>.")


class ToolCallStep(_Strict):
    tool_call: ToolCallSpec = Field(
        description="Call one tool; ends this model call with stop reason tool_use."
    )


class ToolCallsStep(_Strict):
    tool_calls: list[ToolCallSpec] = Field(
        min_length=1, description="Call several tools at once; ends this model call."
    )


class UsageSpec(_Strict):
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cached_read_tokens: int = Field(default=0, ge=0)
    cached_write_tokens: int = Field(default=0, ge=0)
    thought_tokens: int = Field(default=0, ge=0)


class UsageStep(_Strict):
    usage: UsageSpec = Field(
        description="Token usage reported for this model call (default: an estimate)."
    )


class StopStep(_Strict):
    stop: Literal["end_turn", "max_tokens", "refusal"] = Field(
        description="How the turn ends; must be the turn's last step."
    )


class ErrorSpec(_Strict):
    kind: ProviderErrorKind = ProviderErrorKind.SERVER
    message: str


class ErrorStep(_Strict):
    error: ErrorSpec = Field(
        description="Fail the model call here, as a provider error would; must be the "
        "turn's last step."
    )


_STEPS: dict[str, type[_Strict]] = {
    "thought": ThoughtStep,
    "message": MessageStep,
    "chunks": ChunksStep,
    "plan": PlanStep,
    "tool_call": ToolCallStep,
    "tool_calls": ToolCallsStep,
    "usage": UsageStep,
    "stop": StopStep,
    "error": ErrorStep,
}
_TAGS = {model: tag for tag, model in _STEPS.items()}


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 and next(iter(value)) in _STEPS else None
    return _TAGS.get(type(value))


Step = Annotated[
    Annotated[ThoughtStep, Tag("thought")]
    | Annotated[MessageStep, Tag("message")]
    | Annotated[ChunksStep, Tag("chunks")]
    | Annotated[PlanStep, Tag("plan")]
    | Annotated[ToolCallStep, Tag("tool_call")]
    | Annotated[ToolCallsStep, Tag("tool_calls")]
    | Annotated[UsageStep, Tag("usage")]
    | Annotated[StopStep, Tag("stop")]
    | Annotated[ErrorStep, Tag("error")],
    Discriminator(
        _step_kind,
        custom_error_type="invalid_step",
        custom_error_message="a step has exactly one key, one of: " + ", ".join(_STEPS),
    ),
]


class ScriptTurn(_Strict):
    steps: list[Step] = Field(min_length=1)
    delay_ms: int | None = Field(
        default=None, ge=0, description="Pause before each chunk (lets tests cancel)."
    )

    @model_validator(mode="after")
    def _final_steps_last(self) -> ScriptTurn:
        for step in self.steps[:-1]:
            if isinstance(step, StopStep | ErrorStep):
                raise ValueError(f"'{_TAGS[type(step)]}' must be the last step of its turn")
        return self


class Script(_Strict):
    """A scripted conversation for the script:PATH provider of acp-server."""

    turns: list[ScriptTurn] = Field(min_length=1, description="One entry per user prompt.")
    delay_ms: int = Field(default=0, ge=0, description="Default pause before each chunk.")


def _where(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    rest = list(loc)
    if rest[:1] == ["turns"] and len(rest) > 1 and isinstance(rest[1], int):
        parts.append(f"turn {rest[1] + 1}")
        rest = rest[2:]
        if rest[:1] == ["steps"] and len(rest) > 1 and isinstance(rest[1], int):
            parts.append(f"step {rest[1] + 1}")
            rest = rest[3:] if len(rest) > 2 and rest[2] in _STEPS else rest[2:]
    if rest:
        parts.append(".".join(str(p) for p in rest))
    return ", ".join(parts) or "top level"


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "invalid_step" and isinstance(item["input"], dict):
            message += f" (found: {', '.join(map(str, item['input'])) or 'none'})"
        problems.append(f"{_where(item['loc'])}: {message}")
    more = error.error_count() - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def load_script(path: Path) -> Script:
    """Read and validate a script file; every problem names the file and the place."""

    def fail(problem: str) -> ProviderError:
        return ProviderError(ProviderErrorKind.BAD_REQUEST, f"the script {path} {problem}")

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot be read: {exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise fail(f"is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise fail(f"is not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        raise fail(f"is not a valid script: {_describe(exc)}") from None


# ---- playing it ----------------------------------------------------------------------

_ENDS_CALL = (ToolCallStep, ToolCallsStep)


def _model_calls(turn: ScriptTurn) -> list[list[tuple[int, Any]]]:
    """The turn's steps (numbered from 1) split into model calls after each tool step."""
    calls: list[list[tuple[int, Any]]] = [[]]
    for number, step in enumerate(turn.steps, start=1):
        calls[-1].append((number, step))
        if isinstance(step, _ENDS_CALL):
            calls.append([])
    return calls


def position(messages: list[Message]) -> tuple[int, int]:
    """(turn, model call) for a request, both counted from 0."""
    users = [i for i, m in enumerate(messages) if isinstance(m, UserMessage)]
    after = messages[users[-1] + 1 :] if users else messages
    return max(len(users) - 1, 0), sum(isinstance(m, AssistantMessage) for m in after)


class ScriptProvider:
    """Plays a ``Script``; see the module docstring for how calls map to steps."""

    name = "script"
    supports_images = True

    def __init__(self, path: str | Path, settings: ProviderSettings | None = None):
        settings = settings or ProviderSettings()
        self.path = Path(path)
        self.script = load_script(self.path)
        self.default_model = settings.model or "script"
        self.models = [self.default_model]
        self.context_window = settings.context_window or 200_000

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        return self._play(request)

    async def aclose(self) -> None:
        return None

    async def _play(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        turn_index, call_index = position(request.messages)
        turns = self.script.turns
        if turn_index >= len(turns):
            raise ProviderError(
                ProviderErrorKind.BAD_REQUEST,
                f"the script {self.path} has {len(turns)} turns; there is no turn {turn_index + 1}",
            )
        turn = turns[turn_index]
        calls = _model_calls(turn)
        if call_index >= len(calls):
            raise ProviderError(
                ProviderErrorKind.BAD_REQUEST,
                f"turn {turn_index + 1} of the script {self.path} has {len(calls)} model "
                f"calls; there is no call {call_index + 1}",
            )
        delay = (turn.delay_ms if turn.delay_ms is not None else self.script.delay_ms) / 1000
        output: list[str] = []
        usage: Usage | None = None
        reason = FinishReason.END_TURN
        for number, step in calls[call_index]:
            if isinstance(step, ThoughtStep | MessageStep | ChunksStep):
                async for event in _text_events(step, delay, output):
                    yield event
            elif isinstance(step, PlanStep):
                await _pause(delay)
                yield PlanUpdate([entry.model_dump() for entry in step.plan])
            elif isinstance(step, ToolCallStep | ToolCallsStep):
                specs = [step.tool_call] if isinstance(step, ToolCallStep) else step.tool_calls
                for n, spec in enumerate(specs, start=1):
                    default_id = f"call_{turn_index + 1}_{number}"
                    if isinstance(step, ToolCallsStep):
                        default_id += f"_{n}"
                    output.append(spec.name + json.dumps(spec.arguments))
                    await _pause(delay)
                    yield ToolCallReady(ToolCall(spec.id or default_id, spec.name, spec.arguments))
                reason = FinishReason.TOOL_USE
            elif isinstance(step, UsageStep):
                usage = Usage(**step.usage.model_dump())
            elif isinstance(step, StopStep):
                reason = FinishReason(step.stop)
            elif isinstance(step, ErrorStep):
                raise ProviderError(step.error.kind, step.error.message)
        yield UsageReport(usage or estimated_usage(request, output))
        yield Finish(reason)


async def _text_events(
    step: ThoughtStep | MessageStep | ChunksStep, delay: float, output: list[str]
) -> AsyncIterator[StreamEvent]:
    if isinstance(step, ThoughtStep):
        chunks = step.thought if isinstance(step.thought, list) else word_chunks(step.thought)
    elif isinstance(step, MessageStep):
        chunks = word_chunks(step.message)
    else:
        chunks = step.chunks
    for chunk in chunks:
        output.append(chunk)
        await _pause(delay)
        yield ThinkingDelta(chunk) if isinstance(step, ThoughtStep) else TextDelta(chunk)


async def _pause(delay: float) -> None:
    if delay > 0:
        await anyio.sleep(delay)
    else:
        await anyio.lowlevel.checkpoint()


def schema() -> dict[str, Any]:
    """The JSON Schema of script files, as committed under ``schemas/``."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema"} | Script.model_json_schema()


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(schema(), indent=2) + "\n", encoding="utf-8")
