"""The ACP methods: a typed route table of thin handlers.

Each route names its method, the protocol type of its params and its handler; the
params are parsed once, before the handler runs, into that type (a bad field becomes
-32602 naming it). Handlers translate between ACP types and the session layer: the live
sessions (``LiveSessions``: opening, tools, busy state, cancellation, closing), the
session service (storage) and the turn loop. They hold no session state of their own.
That machinery is imported by the handlers that use it, so that answering ``initialize``
never waits for it (see ``server.py``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
from pydantic import ValidationError

from acp_server import __version__, errors
from acp_server.config.settings import Settings
from acp_server.logs import get_logger
from acp_server.protocol import schema as s
from acp_server.protocol.client import EditorBridge, EditorListener, send_update
from acp_server.transport.rpc import Connection, Handler, RequestContext

if TYPE_CHECKING:  # the session machinery loads after initialize is answered
    from acp_server.agent.providers.base import Provider, ProviderError
    from acp_server.agent.turn import LiveSession, StopReason
    from acp_server.sessions.live import LiveSessions
    from acp_server.sessions.model import SessionRecord
    from acp_server.sessions.service import SessionService

log = get_logger("acp_server.methods")
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


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    params: type[s.AcpModel]
    handler: Callable[[RequestContext, Any], Awaitable[Any]]
    notification: bool = False
    """Sent without an id (``session/cancel``); every other method needs one."""


class AcpMethods:
    """The ACP surface of one connection."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: Callable[[], Awaitable[SessionService]],
        provider: Callable[[], Provider],
        task_group: anyio.abc.TaskGroup,
    ):
        self.settings = settings
        self._service = service
        self._provider = provider
        self._tg = task_group
        self.connection: Connection | None = None
        self.client = s.ClientCapabilities()

    @functools.cached_property
    def sessions(self) -> LiveSessions:
        from acp_server.sessions.live import LiveSessions

        return LiveSessions(
            self._tg, self._notice, mcp_start_wait=self.settings.agent.mcp_start_wait
        )

    def routes(self) -> list[Route]:
        return [
            Route("initialize", s.InitializeRequest, self.initialize),
            Route("authenticate", s.AuthenticateRequest, self.authenticate),
            Route("session/new", s.NewSessionRequest, self.new_session),
            Route("session/load", s.LoadSessionRequest, self.load_session),
            Route("session/resume", s.ResumeSessionRequest, self.resume_session),
            Route("session/fork", s.ForkSessionRequest, self.fork_session),
            Route("session/list", s.ListSessionsRequest, self.list_sessions),
            Route("session/close", s.SessionIdRequest, self.close_session),
            Route("session/delete", s.SessionIdRequest, self.delete_session),
            Route("session/prompt", s.PromptRequest, self.prompt),
            Route("session/cancel", s.SessionIdRequest, self.cancel, notification=True),
            Route("session/set_mode", s.SetModeRequest, self.set_mode),
            Route("session/set_config_option", s.SetConfigOptionRequest, self.set_config_option),
            Route(RENAME_METHOD, s.RenameSessionRequest, self.rename),
        ]

    @property
    def notifications(self) -> frozenset[str]:
        return frozenset(route.method for route in self.routes() if route.notification)

    def handlers(self) -> dict[str, Handler]:
        """The transport's view: each method's params parsed once, after initialize."""
        return {route.method: self._handler(route) for route in self.routes()}

    def _handler(self, route: Route) -> Handler:
        async def handle(ctx: RequestContext, params: dict[str, Any]) -> Any:
            if self.connection is None and route.method != "initialize":
                raise errors.InvalidRequest(
                    f"Invalid request: {route.method} was sent before initialize; send "
                    "initialize first to agree on the protocol version and capabilities"
                )
            return await route.handler(ctx, parse(route.params, params))

        return handle

    # ---- connection -----------------------------------------------------------------------

    async def initialize(self, ctx: RequestContext, request: s.InitializeRequest) -> Any:
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

    async def authenticate(self, ctx: RequestContext, request: s.AuthenticateRequest) -> Any:
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

    def _bridge(self, session_id: str) -> EditorBridge | None:
        """The editor's fs and terminals for a session, when it offered any."""
        fs = self.client.fs
        if self.connection is None or not (
            fs.read_text_file or fs.write_text_file or self.client.terminal
        ):
            return None
        return EditorBridge(self.connection, session_id, self.client)

    async def _open(
        self,
        record: SessionRecord,
        servers: list[dict[str, Any]],
        problems: list[str] | None = None,
    ) -> LiveSession:
        return await self.sessions.open(
            record, servers, client=self._bridge(record.id), problems=problems
        )

    async def _reopen(self, record: SessionRecord, given: list[s.McpServer] | None) -> LiveSession:
        """Open a stored session with the MCP servers the client sent, or, when it sent
        none (resume and fork may omit them), the ones the session had."""
        service = await self._service()
        if given is not None:
            servers = _servers(given)
            await service.remember_mcp_servers(record, servers)
            return await self._open(record, servers)
        servers, problems = service.restorable_mcp_servers(record)
        return await self._open(record, servers, problems)

    async def _notice(self, session_id: str, problem: str) -> None:
        from acp_server.agent.turn import new_message_id

        if self.connection is not None:
            listener = EditorListener(self.connection, session_id)
            await listener.message_chunk(new_message_id(), f"⚠️ {problem}\n\n")

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
            await self.sessions.announced(session_id)

        ctx.then(commands)

    async def new_session(self, ctx: RequestContext, request: s.NewSessionRequest) -> Any:
        service = await self._service()
        servers = _servers(request.mcp_servers)
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

    async def load_session(self, ctx: RequestContext, request: s.LoadSessionRequest) -> Any:
        from acp_server.protocol.replay import replay_items

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

    async def resume_session(self, ctx: RequestContext, request: s.ResumeSessionRequest) -> Any:
        service = await self._service()
        record = await service.reopen(
            request.session_id,
            cwd=request.cwd,
            additional_directories=request.additional_directories,
        )
        await self._reopen(record, request.mcp_servers)
        self._announce(ctx, record.id)
        return self._setup_response(record, with_id=False)

    async def fork_session(self, ctx: RequestContext, request: s.ForkSessionRequest) -> Any:
        self.sessions.get(request.session_id)
        service = await self._service()
        record = await service.fork(
            request.session_id,
            cwd=request.cwd,
            additional_directories=request.additional_directories,
        )
        await self._reopen(record, request.mcp_servers)
        self._announce(ctx, record.id)
        return self._setup_response(record, with_id=True)

    async def list_sessions(self, ctx: RequestContext, request: s.ListSessionsRequest) -> Any:
        service = await self._service()
        records, cursor = await service.list_page(cwd=request.cwd, cursor=request.cursor)
        self.sessions.remember([r.id for r in records])
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

    async def close_session(self, ctx: RequestContext, request: s.SessionIdRequest) -> Any:
        await self.sessions.close(request.session_id)
        return {}

    async def delete_session(self, ctx: RequestContext, request: s.SessionIdRequest) -> Any:
        self.sessions.check_known(request.session_id)
        await self.sessions.discard(request.session_id)
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

    async def prompt(self, ctx: RequestContext, request: s.PromptRequest) -> Any:
        self._check_prompt(request)
        live = self.sessions.get(request.session_id)
        async with self.sessions.turn(live):
            ctx.on_cancel = live.cancel
            stop = await self._turn(ctx, live, request)
        return s.PromptResponse(stop_reason=stop).wire()

    async def _turn(
        self, ctx: RequestContext, live: LiveSession, request: s.PromptRequest
    ) -> StopReason:
        from acp_server.agent.turn import TurnConfig, TurnRunner, new_message_id

        service = await self._service()
        listener = EditorListener(ctx.connection, live.id)
        blocks = [block.wire() for block in request.prompt]
        command = _command(blocks)
        if command is not None:
            return await self._command(ctx, live, *command)
        provider = self._provider()
        problems = await self.sessions.prepare(live, service, images=provider.supports_images)
        if problems is None:
            return "cancelled"
        for problem in problems:
            await listener.message_chunk(new_message_id(), f"⚠️ {problem}\n\n")
        assert live.history is not None
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
                prices=settings.provider,
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
        from acp_server.agent.titles import generate_title

        try:
            with anyio.move_on_after(30):
                title = await generate_title(
                    provider, live.record.model or provider.default_model, blocks
                )
                if not title or live.record.title_set_by_user or live.closed:
                    return
                service = await self._service()
                await service.rename(live.id, title, by_user=False)
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
        from acp_server.agent.turn import new_message_id

        listener = EditorListener(ctx.connection, live.id)
        message_id = new_message_id()
        if name == "title":
            if not argument:
                await listener.message_chunk(message_id, "Usage: /title <new title>")
                return "end_turn"
            await self._set_title(ctx.connection, live, argument)
            await listener.message_chunk(message_id, f"Session renamed to “{argument[:200]}”.")
        return "end_turn"

    async def _set_title(self, connection: Connection, live: LiveSession, title: str) -> None:
        title = " ".join(title.split())[:200]
        if not title:
            raise errors.InvalidParams(
                "Invalid params: title must not be empty", data={"field": "title"}
            )
        service = await self._service()
        await service.rename(live.id, title, by_user=True)
        live.record.title = title
        live.record.title_set_by_user = True
        await send_update(connection, live.id, s.SessionInfoUpdate(title=title))

    async def rename(self, ctx: RequestContext, request: s.RenameSessionRequest) -> Any:
        await self._set_title(ctx.connection, self.sessions.get(request.session_id), request.title)
        return {}

    async def cancel(self, ctx: RequestContext, request: s.SessionIdRequest) -> None:
        self.sessions.cancel(request.session_id)

    # ---- configuration -------------------------------------------------------------------

    async def set_mode(self, ctx: RequestContext, request: s.SetModeRequest) -> Any:
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
        self, ctx: RequestContext, request: s.SetConfigOptionRequest
    ) -> Any:
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
        record = self.sessions.get(session_id).record
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
        service = await self._service()
        if config_id == "mode":
            await service.configure(session_id, mode=value)
            record.mode = value
        else:
            await service.configure(session_id, model=value)
            record.model = value
        return record

    async def client_gone(self) -> None:
        """stdin closed or the server is told to stop: every running turn stops and is
        stored as interrupted, with what it had said."""
        self.sessions.interrupt_all()

    async def shutdown(self) -> None:
        await self.sessions.shutdown()


def _servers(servers: list[s.McpServer] | None) -> list[dict[str, Any]]:
    return [server.wire() for server in servers or []]


_RETRYABLE = {"rate_limit", "server", "timeout", "unreachable"}


def _failed_turn(failure: ProviderError) -> errors.AcpServerError:
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
