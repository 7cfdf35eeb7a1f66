"""rxagent.web: runs in the browser (the ``rxagent[web]`` extra, on Starlette).

- :mod:`rxagent.web.hub`: the run hub (:class:`RunHub`, and :class:`LocalHub` in
  this process): runs by unguessable id, their event logs served from any index,
  decisions on paused runs, cancellation.
- :func:`create_app`: the ASGI app over a hub (routes in :mod:`rxagent.web.app`).
- Encoders, usable without the app: :mod:`rxagent.web.native` (rxagent's own SSE),
  :mod:`rxagent.web.ai_sdk` (the AI SDK UI message stream, ``useChat``),
  :mod:`rxagent.web.agui` (AG-UI).
- :class:`ServerThread`: serve an app with uvicorn on a thread (tests, notebooks).

``import rxagent`` does not load this package (nor Starlette, uvicorn, ag_ui).
"""

from rxagent.web import agui, ai_sdk, native
from rxagent.web.app import AuthHook, create_app
from rxagent.web.hub import (
    AgentNotFound,
    CallDecision,
    EventsGone,
    HubError,
    HubFull,
    InvalidDecision,
    LocalHub,
    Page,
    Principal,
    RunConflict,
    RunHub,
    RunInfo,
    RunNotFound,
)
from rxagent.web.server import ServerThread

__all__ = [
    "AgentNotFound",
    "AuthHook",
    "CallDecision",
    "HubError",
    "EventsGone",
    "HubFull",
    "InvalidDecision",
    "LocalHub",
    "Page",
    "Principal",
    "RunConflict",
    "RunHub",
    "RunInfo",
    "RunNotFound",
    "ServerThread",
    "agui",
    "ai_sdk",
    "create_app",
    "native",
]
