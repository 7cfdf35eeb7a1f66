"""rxagent.web's encoders in routes of your own: no hub, no run ids, one run per request.

    python examples/web_own_route.py        # serves the app, calls both routes, prints

The encoders are plain functions and Rx operators over a run's events:
``ai_sdk.ui_message_chunks()`` gives the AI SDK UI message stream's chunks,
``agui.agui_events(...)`` AG-UI events. Here a Starlette route runs an agent for each
request and streams its events in either encoding (the same works in a FastAPI route).
Without the hub the run belongs to the request: a client that goes away disposes the
subscription, which cancels the run. Use ``create_app`` for runs that outlive their tabs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

import rxagent as ra
from rxagent import scripted as s
from rxagent.web import ServerThread, agui, ai_sdk, native


@ra.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def agent() -> ra.Agent:
    provider = ra.ScriptedProvider(
        [["Adding. ", s.call("add", {"a": 2, "b": 3})], ["2 + 3 = ", "5."]]
    )
    return ra.Agent(provider, tools=[add])


async def chat(request: Request) -> StreamingResponse:
    """``POST /chat {"prompt": ...}``: the run as the AI SDK's UI message stream."""
    prompt = (await request.json())["prompt"]
    run = agent().run(prompt)
    chunks = run.pipe(ra.ops.materialize(), ai_sdk.ui_message_chunks())

    async def body() -> AsyncIterator[str]:
        async for chunk in ra.to_async_iterable(chunks):
            yield native.data_frame(json.dumps(chunk))
        yield ai_sdk.DONE

    return StreamingResponse(body(), headers=ai_sdk.HEADERS)


async def ag_ui(request: Request) -> StreamingResponse:
    """``GET /ag-ui?prompt=...``: the run as AG-UI events."""
    run = agent().run(request.query_params["prompt"])
    items = run.pipe(ra.ops.materialize(), agui.agui_events(thread_id="t", run_id="r"))

    async def body() -> AsyncIterator[str]:
        async for item in ra.to_async_iterable(items):
            yield native.data_frame(agui.wire(item))

    return StreamingResponse(body(), media_type=native.MEDIA_TYPE)


app = Starlette(
    routes=[Route("/chat", chat, methods=["POST"]), Route("/ag-ui", ag_ui, methods=["GET"])]
)


def main() -> None:
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        with client.stream("POST", "/chat", json={"prompt": "What is 2 + 3?"}) as response:
            print("AI SDK:", response.headers["x-vercel-ai-ui-message-stream"])
            for line in response.iter_lines():
                if line.startswith("data: "):
                    print(" ", line[len("data: ") :])
        with client.stream("GET", "/ag-ui", params={"prompt": "What is 2 + 3?"}) as response:
            print("AG-UI:")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    print(" ", json.loads(line[len("data: ") :])["type"])


if __name__ == "__main__":
    main()
