"""One prompt turn: model calls, tool calls, permissions, persistence, stop reason.

Each completed message (a thought, a reply, a tool call) is stored as it completes, so
a crash loses at most the message in flight; the turn's last message is stored with the
turn's end, in the same transaction. Cancellation (``session/cancel``,
``session/close``, ``$/cancel_request``) arrives as anyio cancellation of the turn's
scope; whatever was already said is then stored in a shielded finaliser and the turn
answers ``cancelled``. The loop speaks to the editor only through ``TurnListener``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel

from acp_server.agent.history import model_messages, prompt_parts
from acp_server.agent.providers.base import (
    AssistantMessage,
    Finish,
    FinishReason,
    Message,
    ModelRequest,
    PlanUpdate,
    Provider,
    ProviderError,
    TextDelta,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallReady,
    ToolResult,
    ToolSpec,
    UsageReport,
    UserMessage,
)
from acp_server.agent.providers.usage import estimated_usage, priced
from acp_server.agent.tools.base import (
    ClientBridge,
    Previews,
    Tool,
    ToolContext,
    ToolError,
    ToolOutcome,
)
from acp_server.config.settings import ProviderSettings
from acp_server.logs import get_logger
from acp_server.sessions.model import (
    Item,
    ItemKind,
    NewItem,
    SessionRecord,
    Turn,
    TurnStatus,
    Usage,
    now_ms,
)

log = get_logger("acp_server.turn")

Decision = Literal[
    "allow_once", "allow_always", "reject_once", "reject_always", "cancelled", "unanswered"
]
"""``unanswered``: the editor's reply was an error or could not be read."""
StopReason = Literal["end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"]

_FINISH_TO_STOP: dict[FinishReason, StopReason] = {
    FinishReason.END_TURN: "end_turn",
    FinishReason.TOOL_USE: "end_turn",
    FinishReason.MAX_TOKENS: "max_tokens",
    FinishReason.REFUSAL: "refusal",
}

DEFAULT_SYSTEM_PROMPT = (
    "You are a coding agent working in the user's project through an editor. "
    "Use the tools to read, search and change files and to run commands; paths are "
    "relative to the working directory {cwd}. Be concise."
)


class TurnListener(Protocol):
    async def message_chunk(self, message_id: str, text: str) -> None: ...
    async def thought_chunk(self, message_id: str, text: str) -> None: ...
    async def tool_call(self, data: dict[str, Any]) -> None: ...
    async def tool_call_update(self, tool_call_id: str, fields: dict[str, Any]) -> None: ...
    async def plan(self, entries: list[dict[str, Any]]) -> None: ...
    async def request_permission(self, data: dict[str, Any]) -> Decision: ...


class TurnLog(Protocol):
    """Where a turn stores what it says, as it says it (the session service)."""

    async def start_turn(self, turn: Turn, prompt: NewItem) -> None: ...
    async def finish_turn(
        self, turn: Turn, context_tokens: int, last: NewItem | None = None
    ) -> None: ...
    async def append(self, session_id: str, item: NewItem) -> Item: ...
    async def update_item(self, session_id: str, seq: int, data: dict[str, Any]) -> None: ...
    async def latest_seq(self, session_id: str) -> int: ...
    async def items(self, session_id: str, *, for_model: bool = False) -> list[Item]: ...
    async def remember_permission_rules(self, session_id: str, rules: dict[str, str]) -> None: ...
    async def exclude_turn(self, session_id: str, turn_id: str) -> None: ...


class Extensions(Protocol):
    """A session's MCP connections (``tools.mcp.SessionExtensions``)."""

    async def settle(self, seconds: float) -> list[str]: ...
    async def aclose(self) -> None: ...


@dataclass
class LiveSession:
    """A session open in this process: its record plus what only lives in memory."""

    record: SessionRecord
    tools: dict[str, Tool] = field(default_factory=dict)
    client: ClientBridge | None = None
    extensions: Extensions | None = None
    """The session's MCP connections, when it has any; they add to ``tools`` as each
    server becomes ready."""
    history: list[Message] | None = None
    synced_seq: int = 0
    """The session's last ``seq`` that ``history`` reflects; another process that
    writes to the session moves the stored one past it."""
    turn_scope: anyio.CancelScope | None = None
    busy: bool = False
    cancel_requested: bool = False
    interrupted: bool = False
    """The server is stopping: a turn cancelled now is stored as interrupted."""
    closed: bool = False
    announced: bool = False
    """The client knows the session (its setup answer is out), so updates may go out."""
    problems: list[str] = field(default_factory=list)
    """What the person should be told about the session (e.g. an MCP server that
    failed), said at the next chance."""

    @property
    def id(self) -> str:
        return self.record.id

    def cancel(self) -> None:
        """Stop the running turn, even one still starting: it stores what it has and
        answers ``cancelled`` (``session/cancel`` and ``$/cancel_request`` alike)."""
        if self.busy:
            self.cancel_requested = True
        if self.turn_scope is not None:
            self.turn_scope.cancel()

    def roots(self) -> list[Path]:
        return [Path(p).resolve() for p in (self.record.cwd, *self.record.additional_directories)]


@dataclass
class TurnConfig:
    max_model_calls: int = 50
    max_tokens: int = 8192
    command_timeout: float = 120.0
    system_prompt: str | None = None
    prices: ProviderSettings | None = None
    """Where the per-token prices come from, for calls the provider did not price."""


def new_message_id() -> str:
    return str(uuid.uuid4())


class _Segment:
    """The thought or reply being streamed now; stored when the stream moves on."""

    def __init__(self, kind: ItemKind):
        self.kind = kind
        self.message_id = new_message_id()
        self.parts: list[str] = []
        self.signature: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class TurnRunner:
    def __init__(
        self,
        live: LiveSession,
        *,
        provider: Provider,
        service: TurnLog,
        listener: TurnListener,
        config: TurnConfig,
    ):
        self.live = live
        self.provider = provider
        self.service = service
        self.listener = listener
        self.config = config
        record = live.record
        self.turn = Turn(
            id=str(uuid.uuid4()),
            session_id=record.id,
            provider=provider.name,
            model=record.model or provider.default_model,
        )
        self.context_tokens = 0
        self._segment: _Segment | None = None
        self._assistant: AssistantMessage | None = None
        self._messages: list[Message] = []
        self._pending_results: list[ToolResult] = []
        self._last: NewItem | None = None
        self._said = False
        self.failure: ProviderError | None = None
        """The provider failure that ended the turn, after retries (stored, and then
        the prompt's answer is an error)."""

    async def run(self, prompt: list[dict[str, Any]], history: list[Message]) -> StopReason:
        live = self.live
        await self.service.start_turn(
            self.turn,
            NewItem(kind=ItemKind.USER, message_id=new_message_id(), data={"content": prompt}),
        )
        live.synced_seq += 1
        self._messages = [
            *history,
            UserMessage(prompt_parts(prompt, images=self.provider.supports_images)),
        ]
        stop: StopReason = "cancelled"
        status = TurnStatus.CANCELLED
        broken = False
        try:
            with anyio.CancelScope() as scope:
                live.turn_scope = scope
                if live.cancel_requested:
                    scope.cancel()
                try:
                    stop = await self._loop()
                    status = TurnStatus.COMPLETED
                except ProviderError as exc:
                    await self._finish_segment()
                    await self._say_problem(exc.message)
                    self.turn.error = exc.message
                    self.failure = exc
                    stop, status = "end_turn", TurnStatus.FAILED
        except Exception:
            # Storage failed under us: what was stored is repaired on the next load;
            # the in-memory history is dropped so it is rebuilt from what was stored.
            broken = True
            live.history = None
            raise
        finally:
            live.turn_scope = None
            if status == TurnStatus.CANCELLED and live.interrupted:
                status = TurnStatus.INTERRUPTED
            if not broken:
                # Also when a scope outside the turn was cancelled (the request itself,
                # shutdown): the turn's end is stored whichever way it was stopped.
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await self._finish(status, stop)
        return stop

    async def _finish(self, status: TurnStatus, stop: StopReason) -> None:
        live = self.live
        await self._finish_segment(last=True)
        self._close_assistant()
        if stop == "refusal":
            # ACP: a refused prompt is not part of the next one. Stored and shown, but
            # out of the model's context, here and after a reload.
            await self.service.exclude_turn(live.id, self.turn.id)
            if self._last is not None:
                self._last.agent_visible = False
        self.turn.status = status
        self.turn.stop_reason = stop
        self.turn.finished_at = now_ms()
        await self.service.finish_turn(self.turn, self.context_tokens, self._last)
        if self._last is not None:
            live.synced_seq += 1
        live.record.input_tokens += self.turn.usage.input_tokens
        live.record.output_tokens += self.turn.usage.output_tokens
        live.record.cost += self.turn.usage.cost
        live.record.context_tokens = self.context_tokens or live.record.context_tokens
        # After a refusal the model's view is rebuilt from the store, which leaves it out.
        live.history = None if stop == "refusal" else self._messages

    # ---- the loop ---------------------------------------------------------------------

    async def _loop(self) -> StopReason:
        # Only the literal "{cwd}" is filled in: any other brace is the user's text.
        system = (self.config.system_prompt or DEFAULT_SYSTEM_PROMPT).replace(
            "{cwd}", self.live.record.cwd
        )
        while True:
            if self.turn.model_calls >= self.config.max_model_calls:
                return "max_turn_requests"
            self.turn.model_calls += 1
            await self._catch_up()
            # Taken anew for each call: an MCP server that became ready meanwhile is in.
            specs = [
                ToolSpec(t.name, t.description, t.input_schema) for t in self.live.tools.values()
            ]
            request = ModelRequest(
                model=self.turn.model or self.provider.default_model,
                system=system,
                messages=list(self._messages),
                tools=specs,
                max_tokens=self.config.max_tokens,
            )
            self._assistant = AssistantMessage()
            calls: list[ToolCall] = []
            finish = FinishReason.END_TURN
            usage_seen = False
            async for event in self.provider.stream(request):
                if isinstance(event, TextDelta):
                    await self._chunk(ItemKind.AGENT, event.text)
                elif isinstance(event, ThinkingDelta):
                    await self._chunk(ItemKind.THOUGHT, event.text, event.signature)
                elif isinstance(event, ToolCallReady):
                    calls.append(event.call)
                elif isinstance(event, PlanUpdate):
                    await self._finish_segment()
                    await self._store(
                        NewItem(
                            kind=ItemKind.PLAN,
                            message_id=new_message_id(),
                            data={"entries": event.entries},
                        )
                    )
                    await self.listener.plan(event.entries)
                elif isinstance(event, UsageReport):
                    usage_seen = True
                    self._add_usage(event.usage)
                elif isinstance(event, Finish):
                    finish = event.reason
            tools_next = finish == FinishReason.TOOL_USE and bool(calls)
            await self._finish_segment(last=not tools_next)
            if not usage_seen:
                self._add_usage(estimated_usage(request, []))
            if tools_next:
                for call in calls:
                    await self._tool(call)
                self._close_assistant()
                continue
            self._close_assistant()
            return _FINISH_TO_STOP[finish]

    async def _catch_up(self) -> None:
        """Another process may have added to this session (two editors on one
        database): if so, rebuild the model's view from the store before calling it.
        Everything this turn said so far is stored by now, so nothing of it is lost."""
        latest = await self.service.latest_seq(self.live.id)
        if latest == self.live.synced_seq:
            return
        log.info("session changed elsewhere; history reloaded", session_id=self.live.id)
        items = await self.service.items(self.live.id, for_model=True)
        self._messages = model_messages(items, images=self.provider.supports_images)
        self.live.synced_seq = latest

    def _add_usage(self, usage: Usage) -> None:
        if usage.cost == 0 and self.config.prices is not None:
            usage = priced(usage, self.config.prices)
        self.turn.usage = self.turn.usage + usage
        self.context_tokens = usage.input_tokens + usage.output_tokens

    async def _chunk(self, kind: ItemKind, text: str, signature: str | None = None) -> None:
        if self._segment is None or self._segment.kind != kind:
            await self._finish_segment()
            self._segment = _Segment(kind)
        segment = self._segment
        if text:
            segment.parts.append(text)
        if signature:
            segment.signature = signature
        if not text:
            return
        if kind == ItemKind.AGENT:
            self._said = True
            await self.listener.message_chunk(segment.message_id, text)
        else:
            await self.listener.thought_chunk(segment.message_id, text)

    async def _finish_segment(self, *, last: bool = False) -> None:
        """Close the segment being streamed. The turn's ``last`` one is kept for
        ``finish_turn`` to store, so a turn's end is one write, not two."""
        segment, self._segment = self._segment, None
        if segment is None or not segment.parts:
            return
        data: dict[str, Any] = {"text": segment.text}
        assistant = self._assistant or AssistantMessage()
        self._assistant = assistant
        if segment.kind == ItemKind.THOUGHT:
            if segment.signature:
                data["signature"] = segment.signature
            assistant.thinking.append(Thinking(segment.text, segment.signature))
        else:
            assistant.text += segment.text
        item = NewItem(kind=segment.kind, message_id=segment.message_id, data=data)
        if last:
            self._last = item
        else:
            await self._store(item)

    def _close_assistant(self) -> None:
        assistant, self._assistant = self._assistant, None
        if assistant is None or not (assistant.text or assistant.thinking or assistant.tool_calls):
            return
        self._messages.append(assistant)
        self._messages.extend(self._pending_results)
        self._pending_results.clear()

    async def _store(self, item: NewItem) -> None:
        item.turn_id = self.turn.id
        await self.service.append(self.live.id, item)
        self.live.synced_seq += 1

    async def _say_problem(self, message: str) -> None:
        """Tell the person what went wrong, and keep it in the transcript, not in the
        model's context."""
        message_id = new_message_id()
        text = f"{chr(10) * 2 if self._said else ''}⚠️ {message}"
        await self.listener.message_chunk(message_id, text)
        await self._store(
            NewItem(
                kind=ItemKind.AGENT,
                message_id=message_id,
                data={"text": text},
                agent_visible=False,
            )
        )

    # ---- tools --------------------------------------------------------------------------

    async def _tool(self, call: ToolCall) -> None:
        assistant = self._assistant or AssistantMessage()
        self._assistant = assistant
        assistant.tool_calls.append(call)
        tool = self.live.tools.get(call.name)
        ctx = ToolContext(
            session_id=self.live.id,
            cwd=Path(self.live.record.cwd),
            roots=self.live.roots(),
            client=self.live.client,
            command_timeout=self.config.command_timeout,
        )
        data: dict[str, Any] = {
            "toolCallId": call.id,
            "name": call.name,
            "title": tool.title(call.arguments) if tool else call.name,
            "kind": tool.kind if tool else "other",
            "status": "pending",
            "rawInput": call.arguments,
        }
        if tool is not None:
            try:
                data["locations"] = tool.locations(call.arguments, ctx)
            except ToolError:
                pass
        item = await self.service.append(
            self.live.id,
            NewItem(kind=ItemKind.TOOL_CALL, message_id=call.id, data=data, turn_id=self.turn.id),
        )
        self.live.synced_seq += 1
        await self.listener.tool_call(dict(data))
        try:
            outcome = await self._decide_and_run(call, tool, ctx, data)
        except anyio.get_cancelled_exc_class():
            data.update(
                status="failed", result="cancelled by the user before it finished", isError=True
            )
            self._pending_results.append(ToolResult(call.id, data["result"], True))
            with anyio.CancelScope(shield=True):
                await self.service.update_item(self.live.id, item.seq, data)
                await self.listener.tool_call_update(call.id, {"status": "failed"})
            raise
        data.update(
            status="failed" if outcome.is_error else "completed",
            result=outcome.model_text,
            isError=outcome.is_error,
        )
        if outcome.content:
            data["content"] = outcome.content
        if outcome.raw_output is not None:
            data["rawOutput"] = outcome.raw_output
        with anyio.CancelScope(shield=True):
            await self.service.update_item(self.live.id, item.seq, data)
        fields: dict[str, Any] = {
            k: data[k] for k in ("status", "content", "rawOutput") if k in data
        }
        if "content" not in fields:
            fields["content"] = [
                {"type": "content", "content": {"type": "text", "text": outcome.model_text}}
            ]
        await self.listener.tool_call_update(call.id, fields)
        self._pending_results.append(ToolResult(call.id, outcome.model_text, outcome.is_error))

    async def _decide_and_run(
        self, call: ToolCall, tool: Tool | None, ctx: ToolContext, data: dict[str, Any]
    ) -> ToolOutcome:
        if tool is None:
            return ToolOutcome(f"there is no tool named {call.name!r}", is_error=True)
        mode = self.live.record.mode or "ask"
        if tool.mutates:
            if mode == "read-only":
                return ToolOutcome(
                    f"refused: the session is in read-only mode, so {call.name} may not run",
                    is_error=True,
                )
            rule = self.live.record.permission_rules.get(call.name)
            if mode == "ask" and rule is None:
                asked = dict(data)
                if isinstance(tool, Previews):
                    try:
                        # The diff or command line, so the person sees what they approve.
                        asked["content"] = await tool.preview(call.arguments, ctx)
                    except ToolError as exc:
                        return ToolOutcome(str(exc), is_error=True)
                decision = await self.listener.request_permission(asked)
                if decision == "cancelled":
                    assert self.live.turn_scope is not None
                    self.live.turn_scope.cancel()
                    await anyio.lowlevel.checkpoint()
                if decision in ("allow_always", "reject_always"):
                    rules = {**self.live.record.permission_rules, call.name: decision.split("_")[0]}
                    self.live.record.permission_rules = rules
                    await self.service.remember_permission_rules(self.live.id, rules)
                    rule = rules[call.name]
                elif decision == "unanswered":
                    return ToolOutcome(
                        "the editor gave no usable answer to the permission request, so this "
                        f"{call.name} call was not run; ask the user before trying again",
                        is_error=True,
                    )
                elif decision == "reject_once":
                    rule = "reject"
                else:
                    rule = "allow"
            if rule == "reject":
                return ToolOutcome(f"the user rejected this {call.name} call", is_error=True)
        await self.listener.tool_call_update(call.id, {"status": "in_progress"})

        async def report(content: list[dict[str, Any]]) -> None:
            await self.listener.tool_call_update(call.id, {"content": content})

        ctx.report = report
        try:
            return await tool.run(call.arguments, ctx)
        except ToolError as exc:
            return ToolOutcome(str(exc), is_error=True)
        except Exception as exc:
            log.exception("tool failed", tool=call.name)
            return ToolOutcome(
                f"{call.name} failed unexpectedly: {type(exc).__name__}", is_error=True
            )
