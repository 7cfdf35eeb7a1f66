"""The ASGI app: runs over HTTP, their events as SSE in three encodings, approvals, cancel.

Routes (relative to where the app is mounted)::

    GET  /                       the chat page (examples/web_chat), unless page=False
    GET  /agents                 {"agents": [...], "default": name}
    POST /runs                   {agent, input} or {agent, conversation} -> 201 {run_id}
    GET  /runs/{id}              the run's state now (status, step, pending calls, usage, result)
    GET  /runs/{id}/events       SSE, rxagent's encoding; Last-Event-ID or ?after=N resumes
    GET  /runs/{id}/ai-sdk       the AI SDK UI message stream of the run (?after=N resumes;
                                 ?approvals=0 for AI SDK 5)
    GET  /runs/{id}/ag-ui        AG-UI events of the run (?after=N, ?thread_id=...)
    POST /runs/{id}/approvals    {call_id, decision: approve|reject, arguments?, reason?},
                                 or {"decisions": [...]} -> 202 {run_id, after}: the run
                                 resumed; its new events follow index ``after``
    POST /runs/{id}/cancel       -> 202
    POST /ai-sdk/chat            useChat's POST body -> the UI message stream
    POST /ag-ui                  AG-UI's RunAgentInput -> AG-UI events

Errors are JSON ``{"error": message}``: 404 for an unknown run or agent (or a run of
another principal), 409 for a decision the run cannot take (not paused, a call not
pending), 422 for a malformed body (with pydantic's ``detail``) or edited arguments
that do not fit the tool. A rejected request changes nothing.

Closing a stream (a browser tab) is not a cancel: the run goes on, and any client
can join it again from any index. A paused run's native stream stays open (with a
heartbeat comment every ``heartbeat`` seconds) and goes on with the resumed
segment; the AI SDK and AG-UI streams end at a pause, as those protocols end a
turn there (resume them with ``?after=`` the index returned by the approval).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from ag_ui import core as agui
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rxagent.agent import Agent
from rxagent.messages import Conversation
from rxagent.state import RunStatus
from rxagent.web import ai_sdk
from rxagent.web.agui import AGUIEncoder, conversation_from_agui, resume_decisions, wire
from rxagent.web.hub import CallDecision, HubError, LocalHub, Page, Principal, RunHub
from rxagent.web.native import HEARTBEAT, MEDIA_TYPE, comment, data_frame, frame, state_json

__all__ = ["PAGE", "AuthHook", "create_app"]

#: Gets the request; returns the principal (a user id, or None) or raises
#: ``starlette.exceptions.HTTPException(401 or 403)``. May be async.
AuthHook = Callable[[Request], "Principal | Awaitable[Principal]"]

#: The chat page: examples/web_chat/index.html (packaged as rxagent/web/static/index.html).
PAGE = Path(__file__).resolve().parent / "static" / "index.html"

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


# -- request bodies ----------------------------------------------------------------------
class _StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = None
    #: Text: one user message.
    input: str | None = None
    #: A conversation, as ``Conversation.to_json()`` writes it.
    conversation: Conversation | None = None

    @model_validator(mode="after")
    def _one_input(self) -> _StartBody:
        if (self.input is None) == (self.conversation is None):
            raise ValueError("give exactly one of `input` (text) and `conversation` (messages)")
        return self


class _DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1)
    decision: Literal["approve", "reject"]
    arguments: dict[str, Any] | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _DecisionBody:
        if self.decision == "reject" and self.arguments is not None:
            raise ValueError("`arguments` go with an approval, not a rejection")
        return self

    def to_decision(self) -> CallDecision:
        return CallDecision(self.call_id, self.decision, self.arguments, self.reason)


class _DecisionsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decisions: list[_DecisionBody] = Field(min_length=1)


class _ChatBody(BaseModel):
    """useChat's POST body: ``{id, messages, trigger, messageId, ...}`` (plus ``agent``)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    trigger: str | None = None
    agent: str | None = None


class _BadRequest(Exception):
    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


def _parse(model: type[Any], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as error:
        detail = json.loads(error.json(include_url=False))
        raise _BadRequest(f"invalid request body: {error.error_count()} error(s)", detail) from None


# -- the app -----------------------------------------------------------------------------
class _Routes:
    def __init__(self, hub: RunHub, auth: AuthHook | None, heartbeat: float) -> None:
        self.hub = hub
        self.auth = auth
        self.heartbeat = heartbeat

    async def principal(self, request: Request) -> Principal:
        if self.auth is None:
            return None
        principal = self.auth(request)
        if inspect.isawaitable(principal):
            principal = await principal
        return principal

    def default_agent(self) -> str:
        names = self.hub.agent_names()
        if not names:
            raise _BadRequest("the hub has no agents")
        return names[0]

    # -- plain routes ------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        await self.principal(request)
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def agents(self, request: Request) -> Response:
        await self.principal(request)
        names = list(self.hub.agent_names())
        return JSONResponse({"agents": names, "default": names[0] if names else None})

    async def start(self, request: Request) -> Response:
        principal = await self.principal(request)
        body: _StartBody = _parse(_StartBody, await request.body())
        given = body.conversation if body.conversation is not None else body.input
        assert given is not None
        run_id = await self.hub.start(
            body.agent or self.default_agent(), given, principal=principal
        )
        return JSONResponse(
            {"run_id": run_id}, status_code=201, headers={"location": f"runs/{run_id}"}
        )

    async def state(self, request: Request) -> Response:
        principal = await self.principal(request)
        info = await self.hub.info(request.path_params["run_id"], principal=principal)
        return JSONResponse(
            {
                "run_id": info.run_id,
                "agent": info.agent,
                "created_at": info.created_at,
                "segments": list(info.segments),
                **state_json(info.state),
            }
        )

    async def approvals(self, request: Request) -> Response:
        principal = await self.principal(request)
        raw = await request.body()
        try:
            data = json.loads(raw or b"null")
        except ValueError:
            data = None
        model: type[Any] = (
            _DecisionsBody if isinstance(data, dict) and "decisions" in data else _DecisionBody
        )
        parsed = _parse(model, raw)
        decisions = (
            [d.to_decision() for d in parsed.decisions]
            if isinstance(parsed, _DecisionsBody)
            else [parsed.to_decision()]
        )
        run_id = request.path_params["run_id"]
        index = await self.hub.decide(run_id, decisions, principal=principal)
        return JSONResponse({"run_id": run_id, "after": index - 1}, status_code=202)

    async def cancel(self, request: Request) -> Response:
        principal = await self.principal(request)
        run_id = request.path_params["run_id"]
        await self.hub.cancel(run_id, principal=principal)
        return JSONResponse({"run_id": run_id}, status_code=202)

    # -- streams -----------------------------------------------------------------------
    def _after(self, request: Request) -> int | None:
        value = request.headers.get("last-event-id") or request.query_params.get("after")
        if value is None or value == "":
            return None
        try:
            after = int(value)
        except ValueError:
            raise _BadRequest(
                f"the event index to resume after must be an integer, not {value!r}"
            ) from None
        if after < -1:
            raise _BadRequest(f"the event index to resume after must be -1 or more, not {after}")
        return after

    async def events(self, request: Request) -> Response:
        principal = await self.principal(request)
        run_id = request.path_params["run_id"]
        after = self._after(request)
        info = await self.hub.info(run_id, principal=principal)
        status = info.state.status
        ended = status.is_final and status is not RunStatus.PAUSED
        if ended and after is not None and after >= info.state.events - 1:
            # Nothing will ever follow: 204 tells an EventSource to stop reconnecting.
            return Response(status_code=204)

        def render(page: Page) -> str:
            start = page.start
            return "".join(
                [
                    frame(start + i, event.type, text)
                    for i, (event, text) in enumerate(zip(page.events, page.json, strict=True))
                ]
            )

        body = self._follow(run_id, principal, after, render, stop_at_pause=False)
        return StreamingResponse(body, media_type=MEDIA_TYPE, headers=_SSE_HEADERS)

    async def _follow(
        self,
        run_id: str,
        principal: Principal,
        after: int | None,
        render: Callable[[Page], str],
        *,
        stop_at_pause: bool,
        end: Callable[[], str] | None = None,
    ) -> AsyncIterator[str]:
        """The run's log after ``after``, each page rendered, until the log ends (or
        pauses, with ``stop_at_pause``), then ``end()``; a heartbeat when idle."""
        position = after
        try:
            while True:
                page = await self.hub.read(
                    run_id,
                    position,
                    principal=principal,
                    wait=self.heartbeat,
                    stop_at_pause=stop_at_pause,
                )
                if page.events:
                    yield render(page)
                    position = page.last
                elif not page.finished(stop_at_pause):
                    yield HEARTBEAT
                if page.finished(stop_at_pause):
                    break
        except HubError as error:  # the run expired, or the hub closed
            yield comment(error.message)
            return
        if end is not None:
            yield end()

    async def _encoded(
        self,
        run_id: str,
        principal: Principal,
        after: int | None,
        encoder: ai_sdk.UIMessageEncoder | AGUIEncoder,
        dump: Callable[[Any], str],
        *,
        prime: bool,
        done: str = "",
    ) -> AsyncIterator[str]:
        """A protocol stream of a run, after event ``after``, ending at the run's end or
        at a pause. With ``prime`` the encoder first reads the events up to ``after``
        (their output dropped), so the stream is the rest of the whole run's stream;
        without, the encoder starts at ``after + 1`` (a resumed segment, for a client
        that has what came before)."""
        if prime and after is not None:
            position: int | None = None
            try:
                while (-1 if position is None else position) < after:
                    page = await self.hub.read(
                        run_id,
                        position,
                        principal=principal,
                        limit=after - (-1 if position is None else position),
                        stop_at_pause=True,
                    )
                    for event in page.events:
                        encoder.feed(event)
                    if page.last is None:
                        break
                    position = page.last
            except HubError as error:
                yield comment(error.message)
                return

        def render(page: Page) -> str:
            start = page.start
            return "".join(
                [
                    data_frame(dump(item), start + offset)
                    for offset, event in enumerate(page.events)
                    for item in encoder.feed(event)
                ]
            )

        def end() -> str:
            return "".join(data_frame(dump(item)) for item in encoder.close()) + done

        async for text in self._follow(
            run_id, principal, after, render, stop_at_pause=True, end=end
        ):
            yield text

    def _ai_sdk_response(
        self,
        run_id: str,
        principal: Principal,
        after: int | None,
        *,
        prime: bool = True,
        approvals: bool = True,
    ) -> Response:
        start = 0 if prime or after is None else after + 1
        encoder = ai_sdk.UIMessageEncoder(run_id=run_id, start=start, approvals=approvals)
        body = self._encoded(
            run_id, principal, after, encoder, _dump_json, prime=prime, done=ai_sdk.DONE
        )
        return StreamingResponse(body, headers=ai_sdk.HEADERS)

    def _agui_response(
        self,
        run_id: str,
        principal: Principal,
        after: int | None,
        *,
        thread_id: str,
        agui_run_id: str,
        prime: bool = True,
    ) -> Response:
        start = 0 if prime or after is None else after + 1
        encoder = AGUIEncoder(
            thread_id=thread_id, run_id=agui_run_id, rxagent_run_id=run_id, start=start
        )
        body = self._encoded(run_id, principal, after, encoder, wire, prime=prime)
        return StreamingResponse(body, media_type=MEDIA_TYPE, headers=_SSE_HEADERS)

    async def ai_sdk_stream(self, request: Request) -> Response:
        principal = await self.principal(request)
        run_id = request.path_params["run_id"]
        after = self._after(request)
        await self.hub.info(run_id, principal=principal)
        # ?approvals=0 for AI SDK 5, which has no approval chunks.
        approvals = request.query_params.get("approvals", "1") not in ("0", "false")
        return self._ai_sdk_response(run_id, principal, after, approvals=approvals)

    async def agui_stream(self, request: Request) -> Response:
        principal = await self.principal(request)
        run_id = request.path_params["run_id"]
        after = self._after(request)
        await self.hub.info(run_id, principal=principal)
        thread_id = request.query_params.get("thread_id") or run_id
        return self._agui_response(
            run_id, principal, after, thread_id=thread_id, agui_run_id=run_id
        )

    async def chat(self, request: Request) -> Response:
        """useChat's endpoint: a new user message starts a run on the conversation the
        messages stand for; approval responses resume the paused run they answer."""
        principal = await self.principal(request)
        body: _ChatBody = _parse(_ChatBody, await request.body())
        try:
            decided = ai_sdk.approval_decisions(body.messages)
        except ValueError as error:
            raise _BadRequest(str(error)) from None
        if decided is not None:
            run_id, decisions = decided
            if run_id is None:
                raise _BadRequest("the approval ids name no run (they are '<run id>:<call id>')")
            after = await self.hub.decide(run_id, decisions, principal=principal) - 1
            return self._ai_sdk_response(run_id, principal, after, prime=False)
        try:
            conversation = ai_sdk.conversation_from_ui_messages(body.messages)
        except (ValueError, ValidationError) as error:
            raise _BadRequest(f"the messages do not make a conversation: {error}") from None
        run_id = await self.hub.start(
            body.agent or self.default_agent(), conversation, principal=principal
        )
        return self._ai_sdk_response(run_id, principal, None)

    async def agui_run(self, request: Request) -> Response:
        """AG-UI's endpoint: ``RunAgentInput`` starts a run on its messages, or resumes
        the paused run its ``resume`` entries answer."""
        principal = await self.principal(request)
        body: agui.RunAgentInput = _parse(agui.RunAgentInput, await request.body())
        if body.resume:
            try:
                run_id, decisions = resume_decisions(body.resume)
            except ValueError as error:
                raise _BadRequest(str(error)) from None
            if run_id is None:
                raise _BadRequest("the interrupt ids name no run (they are '<run id>:<call id>')")
            after = await self.hub.decide(run_id, decisions, principal=principal) - 1
            return self._agui_response(
                run_id,
                principal,
                after,
                thread_id=body.thread_id,
                agui_run_id=body.run_id,
                prime=False,
            )
        props = body.forwarded_props if isinstance(body.forwarded_props, Mapping) else {}
        agent = props.get("agent") or self.default_agent()
        run_id = await self.hub.start(
            str(agent), conversation_from_agui(body.messages), principal=principal
        )
        return self._agui_response(
            run_id, principal, None, thread_id=body.thread_id, agui_run_id=body.run_id
        )


def _dump_json(chunk: Any) -> str:
    return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False)


async def _hub_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HubError)
    return JSONResponse({"error": error.message}, status_code=error.status_code)


async def _bad_request(request: Request, error: Exception) -> Response:
    assert isinstance(error, _BadRequest)
    content: dict[str, Any] = {"error": error.message}
    if error.detail is not None:
        content["detail"] = error.detail
    return JSONResponse(content, status_code=422)


def create_app(
    agents: Mapping[str, Agent] | None = None,
    *,
    hub: RunHub | None = None,
    auth: AuthHook | None = None,
    cors_origins: Sequence[str] | None = None,
    page: bool = True,
    heartbeat: float = 15.0,
    debug: bool = False,
) -> Starlette:
    """The ASGI app (Starlette) over ``hub``, or over a :class:`LocalHub` of ``agents``.

    ``auth`` guards every route: it gets the request and returns the principal
    (a user id, or ``None``), or raises ``starlette.exceptions.HTTPException``
    with 401 or 403; a principal sees and acts on its own runs only. CORS is off
    unless ``cors_origins`` lists the origins allowed. ``page=False`` leaves the
    chat page out. The app's ``state.hub`` is the hub; a hub the app made is
    closed at the app's shutdown (when you mount the app into another, close it
    in your own lifespan: ``await app.state.hub.close()``).
    """
    if hub is None:
        if agents is None:
            raise TypeError("create_app needs `agents` (a mapping of names to agents) or a `hub`")
        hub = LocalHub(agents)
        owned = True
    else:
        if agents is not None:
            raise TypeError("give `agents` or a `hub`, not both (the hub has the agents)")
        owned = False
    routes = _Routes(hub, auth, heartbeat)
    table = [
        Route("/agents", routes.agents, methods=["GET"]),
        Route("/runs", routes.start, methods=["POST"]),
        Route("/runs/{run_id}", routes.state, methods=["GET"]),
        Route("/runs/{run_id}/events", routes.events, methods=["GET"]),
        Route("/runs/{run_id}/ai-sdk", routes.ai_sdk_stream, methods=["GET"]),
        Route("/runs/{run_id}/ag-ui", routes.agui_stream, methods=["GET"]),
        Route("/runs/{run_id}/approvals", routes.approvals, methods=["POST"]),
        Route("/runs/{run_id}/cancel", routes.cancel, methods=["POST"]),
        Route("/ai-sdk/chat", routes.chat, methods=["POST"]),
        Route("/ag-ui", routes.agui_run, methods=["POST"]),
    ]
    if page:
        table.insert(0, Route("/", routes.index, methods=["GET"]))
    middleware = []
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                expose_headers=["x-vercel-ai-ui-message-stream", "location"],
            )
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if owned:
            await hub.close()

    app = Starlette(
        debug=debug,
        routes=table,
        middleware=middleware,
        exception_handlers={HubError: _hub_error, _BadRequest: _bad_request},
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app
