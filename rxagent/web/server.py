"""Serving the app: :class:`ServerThread` runs uvicorn on a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

__all__ = ["ServerThread", "serve"]

T = TypeVar("T")


class _Server(uvicorn.Server):
    """A uvicorn server that says when it has started (or failed to), and where."""

    def __init__(
        self, config: uvicorn.Config, on_ready: Callable[[str], None] | None = None
    ) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._on_ready = on_ready

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await super().startup(sockets)
            if self.started:
                bound = [s for server in self.servers for s in server.sockets]
                host, port = bound[0].getsockname()[:2]
                self.url = f"http://{host}:{port}"
                if self._on_ready is not None:
                    self._on_ready(self.url)
        finally:
            self.ready.set()


def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` with uvicorn until interrupted; ``on_ready(url)`` once it listens
    (``port=0`` picks a free port, which the URL then names). Streams still open at
    shutdown (a tab on a paused run) are cut after 2 seconds."""
    _Server(_config(app, host, port, log_level, grace=2), on_ready).run()


def _config(app: ASGIApp, host: str, port: int, log_level: str, grace: int) -> uvicorn.Config:
    # Streams still open at shutdown (on a paused run, they wait) are cut after `grace` s.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=grace,
    )


class ServerThread:
    """An ASGI app served by uvicorn on ``host`` (a free port by default), on a thread.

    ``start()`` returns once the server listens (``url`` is then set); ``stop()``
    shuts it down (running the app's shutdown) and joins the thread. Also a
    context manager. ``call(coroutine)`` runs a coroutine on the server's event
    loop and returns its result (the app's hub lives there)::

        with ServerThread(create_app({"demo": agent})) as server:
            httpx.post(f"{server.url}/runs", json={"agent": "demo", "input": "hi"})
    """

    def __init__(
        self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self._server = _Server(_config(app, host, port, log_level, grace=1))
        self._thread = threading.Thread(target=self._server.run, name="rxagent-web", daemon=True)
        self.host = host
        self.port = port
        self.url = ""

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._server.ready.wait(timeout) or not self._server.started:
            self.stop()
            raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
        self.url = self._server.url
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def connections(self) -> int:
        """How many client connections the server has open now."""
        return len(self._server.server_state.connections)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = 10.0) -> T:
        """Run ``coroutine`` on the server's event loop; its result."""
        loop = self._server.loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("the server is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
