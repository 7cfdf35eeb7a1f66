"""OpenAIResponsesProvider: the request body of the Responses API, and its options."""

from __future__ import annotations

from typing import Any

from rxagent.messages import AssistantMessage, Message, SystemMessage, to_openai_message
from rxagent.providers.base import ProviderRequest
from rxagent.providers.openai._provider import StreamingProvider
from rxagent.providers.responses._assembly import DATA_KEY, ResponsesAssembler

__all__ = ["OpenAIResponsesProvider", "to_input"]


class OpenAIResponsesProvider(StreamingProvider):
    """A provider for OpenAI's Responses API (``POST /responses``), streamed.

    Built like :class:`~rxagent.providers.openai.OpenAIProvider`, with the same
    arguments, timeouts, retries (``StepRetry`` events) and errors: the
    ``openai`` SDK sends the request (auth, configuration, status errors) and the
    provider reads the event stream itself. Text, refusals, reasoning summaries
    (``response.reasoning_summary_text.delta``) and raw reasoning text become
    ``TextDelta`` and ``ReasoningDelta``; a function call's arguments stream as
    ``ToolArgsDelta`` and the call is ready when its output item is done;
    ``response.completed`` gives the usage.

    Stateless by default: each turn sends the whole conversation as ``input``
    (system messages included as ``system`` items). The reasoning items of a
    turn (with their ``encrypted_content`` when the server was asked for it)
    are kept with its assistant message (``AssistantMessage.provider_data``) and
    sent back before that message's calls on later turns, as reasoning models
    need. With ``store=False`` (a request option), ``include`` asks for the
    encrypted reasoning unless you give ``include`` yourself.

    With ``stateful=True`` a turn that follows an answer of this API sends only
    the messages after that answer, with ``previous_response_id`` (the server
    keeps the rest: it needs ``store`` on, the default); system messages go as
    ``instructions``, since the server does not carry those over.

    Chat-completions option names are translated: ``max_tokens`` (and
    ``max_completion_tokens``) to ``max_output_tokens``, ``response_format`` to
    ``text.format``, ``reasoning_effort`` to ``reasoning.effort``, a
    ``tool_choice`` naming a function to the flat form; other options go in the
    body as they are. Function tools are sent with ``strict`` off unless the
    tool asks for it (the API's default is on, which most schemas fail).
    """

    #: The ``gen_ai.provider.name`` of tracing (``rxagent.otel``): the API spoken.
    provider_name = "openai"
    path = "/responses"

    def __init__(self, model: str, *, stateful: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.stateful = stateful

    def _body(self, request: ProviderRequest) -> dict[str, Any]:
        items, instructions, previous = to_input(request.messages, stateful=self.stateful)
        body: dict[str, Any] = {"model": self.model, "input": items}
        if instructions is not None:
            body["instructions"] = instructions
        if previous is not None:
            body["previous_response_id"] = previous
        if request.tools:
            body["tools"] = [_tool(spec.to_openai()) for spec in request.tools]
        return body

    def _assembler(self, request: ProviderRequest) -> ResponsesAssembler:
        return ResponsesAssembler(request.step)

    def _option(self, body: dict[str, Any], key: str, value: Any) -> None:
        if key in ("max_tokens", "max_completion_tokens"):
            body["max_output_tokens"] = value
        elif key == "response_format" and isinstance(value, dict):
            kind = value.get("type")
            form = {"type": kind, **value["json_schema"]} if kind == "json_schema" else dict(value)
            body["text"] = {**body.get("text", {}), "format": form}
        elif key == "reasoning_effort":
            body["reasoning"] = {**body.get("reasoning", {}), "effort": value}
        elif key == "tool_choice" and isinstance(value, dict) and "function" in value:
            body["tool_choice"] = {"type": "function", "name": value["function"]["name"]}
        else:
            body[key] = value
            if key == "store" and value is False:
                body.setdefault("include", ["reasoning.encrypted_content"])

    async def __aenter__(self) -> OpenAIResponsesProvider:
        return self


def to_input(
    messages: tuple[Message, ...] | list[Message], *, stateful: bool = False
) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """A conversation as Responses API ``input`` items, ``instructions`` and the
    ``previous_response_id`` (the last two only when ``stateful``)."""
    start = 0
    previous: str | None = None
    instructions: str | None = None
    if stateful:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if isinstance(message, AssistantMessage):
                data = (message.provider_data or {}).get(DATA_KEY) or {}
                if data.get("response_id"):
                    previous, start = str(data["response_id"]), index + 1
                    break
        system = [m.content for m in messages if isinstance(m, SystemMessage)]
        instructions = "\n\n".join(system) if system else None
    items: list[dict[str, Any]] = []
    for message in messages[start:]:
        if stateful and isinstance(message, SystemMessage):
            continue
        items.extend(_items(message))
    return items, instructions, previous


def _items(message: Message) -> list[dict[str, Any]]:
    wire = to_openai_message(message)
    role = wire["role"]
    if role == "tool":
        return [
            {
                "type": "function_call_output",
                "call_id": wire["tool_call_id"],
                "output": wire["content"],
            }
        ]
    if role == "user" and not isinstance(wire["content"], str):
        return [{"role": "user", "content": [_part(part) for part in wire["content"]]}]
    if role != "assistant":
        return [{"role": role, "content": wire["content"]}]
    assert isinstance(message, AssistantMessage)
    data = (message.provider_data or {}).get(DATA_KEY) or {}
    # A reasoning model's reasoning goes back before the output it led to.
    items: list[dict[str, Any]] = [dict(item) for item in data.get("reasoning") or ()]
    if wire.get("content"):
        items.append({"role": "assistant", "content": wire["content"]})
    for call in wire.get("tool_calls") or ():
        function = call["function"]
        items.append(
            {
                "type": "function_call",
                "call_id": call["id"],
                "name": function["name"],
                "arguments": function["arguments"],
            }
        )
    return items


def _part(part: Any) -> Any:
    """A chat-completions content part as a Responses API input part."""
    if not isinstance(part, dict):
        return part
    kind = part.get("type")
    if kind == "text":
        return {"type": "input_text", "text": part.get("text", "")}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return {"type": "input_image", "image_url": url}
    return part


def _tool(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions function tool as a Responses API function tool (flat)."""
    function = dict(chat["function"])
    function.setdefault("strict", False)
    return {"type": "function", **function}
