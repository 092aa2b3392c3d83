"""The ACP methods: parse params into protocol types, call the session service and the
agent loop, answer in protocol types.

One ``AcpAgent`` serves one connection. Sessions opened on it live in
``self.live``; each has its own tools, MCP processes, config and turn scope, and shares
nothing mutable with another.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
from pydantic import ValidationError

from acp_server import __version__, errors
from acp_server.agent.history import model_messages
from acp_server.agent.providers.base import Provider, ProviderError
from acp_server.agent.titles import generate_title
from acp_server.agent.turn import (
    LiveSession,
    StopReason,
    TurnConfig,
    TurnRunner,
    new_message_id,
)
from acp_server.config.settings import Settings
from acp_server.logs import get_logger
from acp_server.protocol import schema as s
from acp_server.protocol.client import EditorBridge, EditorListener, send_update
from acp_server.protocol.replay import replay_items
from acp_server.sessions.model import SessionRecord, StoreUnavailable
from acp_server.sessions.service import SessionService
from acp_server.transport.rpc import Connection, Handler, RequestContext

log = get_logger("acp_server.agent")
M = TypeVar("M", bound=s.AcpModel)

EXTENSION = "acp-server"
RENAME_METHOD = "_acp_server/session/rename"
MODES = [
    s.SessionMode(
        id="ask", name="Ask", description="Reads run freely; edits and commands ask first"
    ),
    s.SessionMode(id="auto", name="Auto", description="Every tool runs without asking"),
    s.SessionMode(id="read-only", name="Read-only", description="Edits and commands are refused"),
]
COMMANDS = [
    s.AvailableCommand(
        name="title",
        description="Rename this session",
        input=s.AvailableCommandInput(hint="the new title"),
    ),
]
IMAGE_PROVIDERS = ("openai", "anthropic")


def parse(model: type[M], params: dict[str, Any]) -> M:
    """Validate params, turning pydantic's error into one readable -32602 message."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "params"
        message = problem["msg"]
        if problem["type"] == "missing":
            message = "is required"
        raise errors.InvalidParams(
            f"Invalid params: {field} {message}", data={"field": field}
        ) from None


def iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class AcpAgent:
    def __init__(
        self,
        settings: Settings,
        *,
        service: Callable[[], Awaitable[SessionService]],
        provider: Callable[[], Provider],
        tools: Callable[
            [
                LiveSession,
                list[dict[str, Any]],
                anyio.abc.TaskGroup,
                Callable[[str], Awaitable[None]],
            ],
            Awaitable[list[str]],
        ],
        close_tools: Callable[[LiveSession], Awaitable[None]],
        task_group: anyio.abc.TaskGroup,
    ):
        self.settings = settings
        self._service = service
        self._provider = provider
        self._open_tools = tools
        self._close_tools = close_tools
        self._tg = task_group
        self.connection: Connection | None = None
        self.client = s.ClientCapabilities()
        self.live: dict[str, LiveSession] = {}
        self._known: set[str] = set()
        """Sessions this connection opened or listed: the ones it may delete."""
        self._problems: dict[str, list[str]] = {}

    notifications = frozenset({"session/cancel"})
    """The methods a client sends as notifications; every other one needs an id."""

    def handlers(self) -> dict[str, Handler]:
        return {
            name: self._initialized(name, _storage_errors(handler))
            for name, handler in self._routes().items()
        }

    def _initialized(self, name: str, handler: Handler) -> Handler:
        """Refuse every method but ``initialize`` until the client has sent it."""
        if name == "initialize":
            return handler

        async def guarded(ctx: RequestContext, params: dict[str, Any]) -> Any:
            if self.connection is None:
                raise errors.InvalidRequest(
                    f"Invalid request: {name} was sent before initialize; send initialize "
                    "first to agree on the protocol version and capabilities"
                )
            return await handler(ctx, params)

        return guarded

    def _routes(self) -> dict[str, Handler]:
        return {
            "initialize": self.initialize,
            "authenticate": self.authenticate,
            "session/new": self.new_session,
            "session/load": self.load_session,
            "session/resume": self.resume_session,
            "session/list": self.list_sessions,
            "session/close": self.close_session,
            "session/delete": self.delete_session,
            "session/fork": self.fork_session,
            "session/prompt": self.prompt,
            "session/cancel": self.cancel,
            "session/set_mode": self.set_mode,
            "session/set_config_option": self.set_config_option,
            RENAME_METHOD: self.rename,
        }

    # ---- connection -----------------------------------------------------------------------

    async def initialize(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.InitializeRequest, params)
        self.client = request.client_capabilities
        self.connection = ctx.connection
        provider = self.settings.provider.name
        capabilities = s.AgentCapabilities(
            load_session=True,
            prompt_capabilities=s.PromptCapabilities(
                image=provider in IMAGE_PROVIDERS, embedded_context=True
            ),
            mcp_capabilities=s.McpCapabilities(http=True),
            session_capabilities=s.SessionCapabilities.model_validate(
                {
                    key: {}
                    for key in (
                        "list",
                        "resume",
                        "close",
                        "delete",
                        "additionalDirectories",
                        "fork",
                    )
                }
            ),
        )
        capabilities.field_meta = {EXTENSION: {"methods": [RENAME_METHOD], "version": __version__}}
        return s.InitializeResponse(
            protocol_version=s.PROTOCOL_VERSION,
            agent_capabilities=capabilities,
            agent_info=s.Implementation(name="acp-server", title="ACP Server", version=__version__),
        ).wire()

    async def authenticate(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.AuthenticateRequest, params)
        raise errors.InvalidParams(
            f"unknown auth method {request.method_id!r}: acp-server needs no authentication "
            "(it advertises no auth methods)",
            data={"field": "methodId"},
        )

    # ---- session setup ---------------------------------------------------------------------

    def _state(
        self, record: SessionRecord
    ) -> tuple[s.SessionModeState, list[s.SelectConfigOption]]:
        provider = self._provider()
        mode = record.mode or self.settings.agent.default_mode
        model = record.model or provider.default_model
        models = list(dict.fromkeys([model, *provider.models]))
        options = [
            s.SelectConfigOption(
                id="mode",
                name="Mode",
                category="mode",
                current_value=mode,
                options=[
                    s.ConfigOptionValue(value=m.id, name=m.name, description=m.description)
                    for m in MODES
                ],
            ),
            s.SelectConfigOption(
                id="model",
                name="Model",
                category="model",
                current_value=model,
                options=[s.ConfigOptionValue(value=m, name=m) for m in models],
            ),
        ]
        return s.SessionModeState(current_mode_id=mode, available_modes=MODES), options

    async def _reopen(self, record: SessionRecord, given: list[s.McpServer] | None) -> LiveSession:
        """Open a stored session with the MCP servers the client sent, or, when it sent
        none (resume and fork may omit them), the ones the session had."""
        service = await self._service()
        if given is not None:
            servers = self._servers(given)
            await service.remember_mcp_servers(record, servers)
            return await self._open(record, servers)
        servers, problems = service.restorable_mcp_servers(record)
        live = await self._open(record, servers)
        self._problems[record.id] = [*problems, *self._problems.get(record.id, [])]
        return live

    async def _open(self, record: SessionRecord, mcp_servers: list[dict[str, Any]]) -> LiveSession:
        """Make a stored session live here: its tools, its MCP processes, its bridge."""
        old = self.live.pop(record.id, None)
        if old is not None:
            await self._shut(old)
        live = LiveSession(record=record)
        if self.connection is not None and (
            self.client.fs.read_text_file or self.client.fs.write_text_file or self.client.terminal
        ):
            live.client = EditorBridge(self.connection, record.id, self.client)
        self._problems.pop(record.id, None)

        async def notice(problem: str) -> None:
            if not live.closed:
                self._problems.setdefault(record.id, []).append(problem)
                await self._tell(live)

        problems = await self._open_tools(live, mcp_servers, self._tg, notice)
        self._problems[record.id] = [*problems, *self._problems.get(record.id, [])]
        self.live[record.id] = live
        self._known.add(record.id)
        return live

    def _open_here(self, session_id: str) -> LiveSession:
        """The session, if this connection opened it: a session is prompted, configured,
        renamed or forked only after session/new, load, resume or fork here."""
        live = self.live.get(session_id)
        if live is None:
            raise errors.ResourceNotFound(
                f"session {session_id!r} is not open on this connection; open it first "
                "with session/load or session/resume (or start one with session/new)",
                data={"sessionId": session_id},
            )
        return live

    async def _tell(self, live: LiveSession) -> None:
        """Say the session's pending problems now, unless a turn will (it is busy) or
        the client does not know the session yet."""
        if live.busy or not live.announced or live.closed or self.connection is None:
            return
        listener = EditorListener(self.connection, live.id)
        for problem in self._problems.pop(live.id, []):
            await listener.message_chunk(new_message_id(), f"⚠️ {problem}\n\n")

    async def _await_tools(self, live: LiveSession) -> list[str] | None:
        """Give MCP servers still starting a bounded time; a sentence for each that the
        turn goes on without. None when the prompt was cancelled meanwhile."""
        if live.extensions is None:
            return []
        with anyio.CancelScope() as scope:
            live.turn_scope = scope
            try:
                return await live.extensions.settle(self.settings.agent.mcp_start_wait)
            finally:
                live.turn_scope = None
        return None

    async def _shut(self, live: LiveSession) -> None:
        live.closed = True
        live.cancel()
        with anyio.CancelScope(shield=True):
            await self._close_tools(live)

    def _setup_response(self, record: SessionRecord, with_id: bool) -> dict[str, Any]:
        modes, options = self._state(record)
        if with_id:
            return s.NewSessionResponse(
                session_id=record.id, modes=modes, config_options=options
            ).wire()
        return s.LoadSessionResponse(modes=modes, config_options=options).wire()

    def _announce(self, ctx: RequestContext, session_id: str) -> None:
        async def commands() -> None:
            await send_update(
                ctx.connection, session_id, s.AvailableCommandsUpdate(available_commands=COMMANDS)
            )
            live = self.live.get(session_id)
            if live is not None:
                live.announced = True
                await self._tell(live)

        ctx.then(commands)

    @staticmethod
    def _servers(servers: list[s.McpServer] | None) -> list[dict[str, Any]]:
        return [server.wire() for server in servers or []]

    async def new_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.NewSessionRequest, params)
        service = await self._service()
        servers = self._servers(request.mcp_servers)
        record = await service.create(
            cwd=request.cwd,
            additional_directories=request.additional_directories or [],
            mcp_servers=servers,
            provider=self.settings.provider.name,
            model=self.settings.provider.model,
            mode=self.settings.agent.default_mode,
        )
        await self._open(record, servers)
        self._announce(ctx, record.id)
        log.info("session created", session_id=record.id)
        return self._setup_response(record, with_id=True)

    async def load_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.LoadSessionRequest, params)
        service = await self._service()
        record = await service.reopen(
            request.session_id,
            cwd=request.cwd,
            additional_directories=request.additional_directories,
        )
        items = await service.items(record.id)
        await replay_items(ctx.connection, record, items)
        if record.title:
            await send_update(
                ctx.connection,
                record.id,
                s.SessionInfoUpdate(title=record.title, updated_at=iso(record.updated_at)),
            )
        await self._reopen(record, request.mcp_servers)
        self._announce(ctx, record.id)
        return self._setup_response(record, with_id=False)

    async def resume_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.ResumeSessionRequest, params)
        service = await self._service()
        record = await service.reopen(
            request.session_id,
            cwd=request.cwd,
            additional_directories=request.additional_directories,
        )
        await self._reopen(record, request.mcp_servers)
        self._announce(ctx, record.id)
        return self._setup_response(record, with_id=False)

    async def fork_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.ForkSessionRequest, params)
        self._open_here(request.session_id)
        service = await self._service()
        record = await service.fork(
            request.session_id,
            cwd=request.cwd,
            additional_directories=request.additional_directories,
        )
        await self._reopen(record, request.mcp_servers)
        self._announce(ctx, record.id)
        return self._setup_response(record, with_id=True)

    async def list_sessions(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.ListSessionsRequest, params)
        service = await self._service()
        records, cursor = await service.list_page(cwd=request.cwd, cursor=request.cursor)
        self._known.update(r.id for r in records)
        return s.ListSessionsResponse(
            sessions=[
                s.SessionInfo(
                    session_id=r.id,
                    cwd=r.cwd,
                    additional_directories=r.additional_directories or None,
                    title=r.title,
                    updated_at=iso(r.updated_at),
                )
                for r in records
            ],
            next_cursor=cursor,
        ).wire()

    async def close_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.SessionIdRequest, params)
        live = self._open_here(request.session_id)
        del self.live[request.session_id]
        await self._shut(live)
        return {}

    async def delete_session(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.SessionIdRequest, params)
        if request.session_id not in self._known:
            raise errors.ResourceNotFound(
                f"session {request.session_id!r} is not known on this connection; list it "
                "with session/list or open it before deleting it (or use "
                "`acp-server sessions delete`)",
                data={"sessionId": request.session_id},
            )
        live = self.live.pop(request.session_id, None)
        if live is not None:
            await self._shut(live)
        service = await self._service()
        await service.delete(request.session_id)
        return {}

    # ---- turns -------------------------------------------------------------------------------

    def _check_prompt(self, request: s.PromptRequest) -> None:
        images = self.settings.provider.name in IMAGE_PROVIDERS
        for index, block in enumerate(request.prompt):
            if isinstance(block, s.ImageContent) and not images:
                raise errors.InvalidParams(
                    f"Invalid params: prompt.{index} is an image, but this agent did not "
                    "advertise promptCapabilities.image",
                    data={"field": f"prompt.{index}"},
                )
            if isinstance(block, s.AudioContent):
                raise errors.InvalidParams(
                    f"Invalid params: prompt.{index} is audio, which this agent does not accept",
                    data={"field": f"prompt.{index}"},
                )

    async def prompt(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.PromptRequest, params)
        self._check_prompt(request)
        live = self._open_here(request.session_id)
        if live.busy:
            raise errors.InvalidRequest(
                f"session {live.id!r} is already answering a prompt; "
                "wait for it to finish or send session/cancel",
                data={"sessionId": live.id},
            )
        live.busy = True
        live.cancel_requested = False
        ctx.on_cancel = live.cancel
        try:
            stop = await self._turn(ctx, live, request)
        finally:
            live.busy = False
        await self._tell(live)  # an MCP server that failed while the turn ran
        return s.PromptResponse(stop_reason=stop).wire()

    async def _turn(
        self, ctx: RequestContext, live: LiveSession, request: s.PromptRequest
    ) -> StopReason:
        service = await self._service()
        listener = EditorListener(ctx.connection, live.id)
        blocks = [block.wire() for block in request.prompt]
        command = _command(blocks)
        if command is not None:
            return await self._command(ctx, live, *command)
        live.announced = True
        late = await self._await_tools(live)
        if late is None:
            return "cancelled"
        for problem in [*self._problems.pop(live.id, []), *late]:
            await listener.message_chunk(new_message_id(), f"⚠️ {problem}\n\n")
        provider = self._provider()
        if live.history is None:
            live.synced_seq = await service.latest_seq(live.id)
            live.history = model_messages(
                await service.items(live.id, for_model=True), images=provider.supports_images
            )
        settings = self.settings
        runner = TurnRunner(
            live,
            provider=provider,
            service=service,
            listener=listener,
            config=TurnConfig(
                max_model_calls=settings.agent.max_model_calls_per_turn,
                max_tokens=settings.provider.max_tokens,
                command_timeout=settings.agent.command_timeout,
                system_prompt=settings.agent.system_prompt,
                input_price_per_mtok=settings.provider.input_price_per_mtok,
                output_price_per_mtok=settings.provider.output_price_per_mtok,
            ),
        )
        first = not live.record.title and not any(
            getattr(m, "role", "") == "assistant" for m in live.history
        )
        if first and settings.agent.generate_titles and not live.record.title_set_by_user:
            # The title arrives as session_info_update whenever it is ready; the turn
            # never waits for it.
            self._tg.start_soon(self._title_task, ctx.connection, live, provider, blocks)
        stop = await runner.run(blocks, live.history)
        with anyio.CancelScope(shield=True):
            await self._usage(ctx.connection, live, provider)
        if runner.failure is not None:
            raise _failed_turn(runner.failure)
        return stop

    async def _title_task(
        self,
        connection: Connection,
        live: LiveSession,
        provider: Provider,
        blocks: list[dict[str, Any]],
    ) -> None:
        try:
            with anyio.move_on_after(30):
                title = await generate_title(
                    provider, live.record.model or provider.default_model, blocks
                )
                if not title or live.record.title_set_by_user or live.closed:
                    return
                service = await self._service()
                await service.store.update(live.id).title(title).apply()
                live.record.title = title
                await send_update(connection, live.id, s.SessionInfoUpdate(title=title))
        except Exception:
            log.warning("title generation failed", session_id=live.id, exc_info=True)

    async def _usage(self, connection: Connection, live: LiveSession, provider: Provider) -> None:
        record = live.record
        size = self.settings.provider.context_window or provider.context_window
        priced = (
            self.settings.provider.input_price_per_mtok
            or self.settings.provider.output_price_per_mtok
        )
        update = s.UsageUpdate(
            used=record.context_tokens,
            size=size,
            cost=s.Cost(amount=round(record.cost, 6)) if priced else None,
        )
        await send_update(connection, live.id, update)

    async def _command(
        self, ctx: RequestContext, live: LiveSession, name: str, argument: str
    ) -> StopReason:
        listener = EditorListener(ctx.connection, live.id)
        message_id = new_message_id()
        if name == "title":
            if not argument:
                await listener.message_chunk(message_id, "Usage: /title <new title>")
                return "end_turn"
            await self._set_title(ctx.connection, live.id, argument)
            await listener.message_chunk(message_id, f"Session renamed to “{argument[:200]}”.")
        return "end_turn"

    async def _set_title(self, connection: Connection, session_id: str, title: str) -> None:
        title = " ".join(title.split())[:200]
        if not title:
            raise errors.InvalidParams(
                "Invalid params: title must not be empty", data={"field": "title"}
            )
        live = self._open_here(session_id)
        service = await self._service()
        if not await service.store.update(session_id).title(title, by_user=True).apply():
            raise errors.SessionNotFound(session_id)
        live.record.title = title
        live.record.title_set_by_user = True
        await send_update(connection, session_id, s.SessionInfoUpdate(title=title))

    async def rename(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        session_id, title = params.get("sessionId"), params.get("title")
        if not isinstance(session_id, str):
            raise errors.InvalidParams(
                "Invalid params: sessionId is required", data={"field": "sessionId"}
            )
        if not isinstance(title, str):
            raise errors.InvalidParams(
                "Invalid params: title must be a string", data={"field": "title"}
            )
        await self._set_title(ctx.connection, session_id, title)
        return {}

    async def cancel(self, ctx: RequestContext, params: dict[str, Any]) -> None:
        request = parse(s.SessionIdRequest, params)
        live = self.live.get(request.session_id)
        if live is not None:
            live.cancel()

    # ---- configuration -------------------------------------------------------------------

    async def set_mode(self, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(s.SetModeRequest, params)
        record = await self._configure(request.session_id, "mode", request.mode_id, "modeId")
        # Clients that show the mode as a config option see it change there too.
        options = self._state(record)[1]
        ctx.then(
            lambda: send_update(
                ctx.connection, record.id, s.ConfigOptionUpdate(config_options=options)
            )
        )
        return {}

    async def set_config_option(
        self, ctx: RequestContext, params: dict[str, Any]
    ) -> dict[str, Any]:
        request = parse(s.SetConfigOptionRequest, params)
        if not isinstance(request.value, str):
            raise errors.InvalidParams(
                f"Invalid params: {request.config_id} takes one of its option values, "
                "not a boolean",
                data={"field": "value"},
            )
        record = await self._configure(
            request.session_id, request.config_id, request.value, "value"
        )
        if request.config_id == "mode":
            # Clients that follow modes (current_mode_update) see it change there too.
            mode = s.CurrentModeUpdate(current_mode_id=request.value)
            ctx.then(lambda: send_update(ctx.connection, record.id, mode))
        return s.SetConfigOptionResponse(config_options=self._state(record)[1]).wire()

    async def _configure(
        self, session_id: str, config_id: str, value: str, field: str
    ) -> SessionRecord:
        """Set the mode or the model; ``field`` is the request's name for ``value``."""
        record = self._open_here(session_id).record
        service = await self._service()
        _, options = self._state(record)
        option = next((o for o in options if o.id == config_id), None)
        if option is None:
            raise errors.InvalidParams(
                f"Invalid params: unknown config option {config_id!r}; options are "
                + ", ".join(o.id for o in options),
                data={"field": "configId"},
            )
        allowed = [choice.value for choice in option.options]
        if value not in allowed:
            raise errors.InvalidParams(
                f"Invalid params: {value!r} is not a value of {config_id}; "
                f"choose one of {', '.join(allowed)}",
                data={"field": field},
            )
        update = service.store.update(session_id)
        if config_id == "mode":
            update.mode(value)
            record.mode = value
        else:
            update.model(value)
            record.model = value
        await update.apply()
        return record

    async def cancel_turns(self) -> None:
        """The client is gone: stop every running turn (each stores what it has)."""
        for live in self.live.values():
            live.cancel()

    async def shutdown(self) -> None:
        for live in list(self.live.values()):
            await self._shut(live)
        self.live.clear()


def _storage_errors(handler: Handler) -> Handler:
    """A database that went away is a plain -32603 for this request, not a crash."""

    async def guarded(ctx: RequestContext, params: dict[str, Any]) -> Any:
        try:
            return await handler(ctx, params)
        except StoreUnavailable as exc:
            log.warning("session database unavailable", method=ctx.method, error=str(exc))
            raise errors.InternalError(str(exc)) from None

    return guarded


_RETRYABLE = {"rate_limit", "server", "timeout", "unreachable"}


def _failed_turn(failure: ProviderError) -> errors.RpcError:
    """A turn the model call failed: an error answer (what streamed is kept), saying
    what kind of failure it was and whether sending the prompt again may help."""
    return errors.InternalError(
        f"The model call failed: {failure.message}",
        data={
            "kind": str(failure.kind),
            "retryable": failure.retryable or str(failure.kind) in _RETRYABLE,
        },
    )


def _command(blocks: list[dict[str, Any]]) -> tuple[str, str] | None:
    if len(blocks) != 1 or blocks[0].get("type") != "text":
        return None
    text = str(blocks[0].get("text", "")).strip()
    if not text.startswith("/"):
        return None
    name, _, argument = text[1:].partition(" ")
    if name in {command.name for command in COMMANDS}:
        return name, argument.strip()
    return None
