"""Hand-written chat-completions event streams, for the wire shapes a script does not make."""

from __future__ import annotations

import json
from typing import Any

import rxagent as ra
from rxagent import testing as t
from rxagent.messages import UserMessage
from rxagent.providers.base import ProviderRequest


def request(text: str = "hi", step: int = 1) -> ProviderRequest:
    """A provider request of one user message."""
    return ProviderRequest(messages=(UserMessage(content=text),), step=step)


def sse(*chunks: Any, done: bool = True) -> t.RawResponse:
    """An answer that streams ``chunks`` as ``data:`` events (then ``[DONE]``)."""
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + (
        "data: [DONE]\n\n" if done else ""
    )
    return t.response(body, content_type="text/event-stream")


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    """A chunk of the first choice with these delta fields (and finish reason)."""
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


def chunk_item(chunk: dict[str, Any]) -> t.Raw:
    """A script item that sends ``chunk`` as one event, amid the scripted ones."""
    return t.raw(f"data: {json.dumps(chunk)}\n\n")


@ra.tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()
