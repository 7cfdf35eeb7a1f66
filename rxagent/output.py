"""Structured output: a type the final answer must fit, its schema, partial and final parses."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json, to_jsonable_python

from rxagent._text import sendable_data
from rxagent.messages import UserMessage

__all__ = ["OutputInvalid", "OutputSpec"]

_NOTHING: Any = object()

# Keywords OpenAI's strict structured outputs did not accept when this was written;
# a schema using any of them is sent without ``strict`` (still as a JSON schema).
_NOT_STRICT = frozenset(
    {
        "default",
        "format",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "patternProperties",
        "propertyNames",
    }
)

# A number (or true/false/null) still being written at the end of a partial JSON text,
# outside any string.
_OPEN_SCALAR = re.compile(r"[-+0-9.eE]+$|\b(t|tr|tru|f|fa|fal|fals|n|nu|nul)$")
# A string delimiter, or an escape (which may escape a quote): JSON has backslashes only
# inside strings, so the quotes found between escapes tell where strings open and close.
_QUOTE_OR_ESCAPE = re.compile(r'\\.|"', re.S)


class OutputInvalid(Exception):
    """The answer does not fit the output type; ``errors`` is readable by the model."""

    def __init__(self, errors: str) -> None:
        super().__init__(errors)
        self.errors = errors


class OutputSpec:
    """What ``Agent(output_type=...)`` asks of the final answer.

    ``output_type`` is a pydantic model or anything a ``TypeAdapter`` takes. A
    schema whose root is not an object is wrapped as ``{"result": ...}`` on the
    wire (OpenAI wants an object) and unwrapped on the way back.
    """

    def __init__(self, output_type: Any, *, retries: int = 1, name: str | None = None) -> None:
        if retries < 0:
            raise ValueError(f"output_retries must be 0 or more, got {retries}")
        self.output_type = output_type
        self.retries = retries
        self.adapter: TypeAdapter[Any] = TypeAdapter(output_type)
        schema = self.adapter.json_schema()
        self.wrapped = schema.get("type") != "object"
        if self.wrapped:
            defs = schema.pop("$defs", None)
            schema = {
                "type": "object",
                "properties": {"result": schema},
                "required": ["result"],
                **({"$defs": defs} if defs else {}),
            }
        self.schema: dict[str, Any] = schema
        raw_name = name or getattr(output_type, "__name__", None) or "output"
        self.name = re.sub(r"[^A-Za-z0-9_-]", "_", raw_name)[:64]
        strict = _strict_schema(schema)
        self.strict = strict is not None
        self.response_format: dict[str, Any] = {
            "type": "json_schema",
            "json_schema": {
                "name": self.name,
                "schema": strict if strict is not None else schema,
                "strict": self.strict,
            },
        }

    def parse_partial(self, text: str) -> Any:
        """The best reading of a JSON text still streaming (``_NOTHING`` when none yet).

        A number or literal still being written (``12`` may become ``123``, ``tr``
        is not yet ``true``) is left out, so that successive snapshots only ever
        grow; a string being written is read as far as it goes (the text inside a
        string is never held back).
        """
        if not _ends_in_string(text):
            text = _OPEN_SCALAR.sub("", text)
        try:
            value = from_json(text, allow_partial="trailing-strings")
        except ValueError:
            return _NOTHING
        if self.wrapped:
            return value.get("result", _NOTHING) if isinstance(value, dict) else _NOTHING
        return value

    def validate_text(self, text: str) -> tuple[Any, Any]:
        """The validated output and its JSON form; raises :class:`OutputInvalid`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise OutputInvalid(
                f"the answer is not JSON ({error.msg} at position {error.pos})"
            ) from None
        return self.validate_data(data, unwrap=True)

    def validate_data(self, data: Any, *, unwrap: bool = False) -> tuple[Any, Any]:
        """Validate JSON data (``unwrap``: it is the wire form, maybe ``{"result": ...}``).

        Text in it is made sendable first (lone surrogates become U+FFFD), as
        everywhere text enters a conversation.
        """
        data = sendable_data(data)
        if unwrap and self.wrapped:
            if not isinstance(data, dict) or "result" not in data:
                raise OutputInvalid('the answer must be an object with a "result" field')
            data = data["result"]
        try:
            value = self.adapter.validate_python(data)
        except ValidationError as error:
            raise OutputInvalid(
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                    for e in error.errors(include_url=False)
                )
            ) from None
        return value, to_jsonable_python(self.adapter.dump_python(value, mode="json"))

    def feedback(self, errors: str) -> UserMessage:
        """The message that asks the model to try again."""
        return UserMessage(
            content=(
                f"Your answer does not fit the required JSON schema: {errors}. "
                "Answer again with only JSON that fits the schema."
            )
        )


def _ends_in_string(text: str) -> bool:
    """Whether a partial JSON text ends inside a string (an odd number of quotes)."""
    return _QUOTE_OR_ESCAPE.findall(text).count('"') % 2 == 1


def grows(previous: Any, current: Any) -> bool:
    """Whether ``current`` extends ``previous`` (keys kept, lists and strings longer)."""
    if previous is _NOTHING:
        return True
    if isinstance(previous, dict):
        return isinstance(current, dict) and all(
            k in current and grows(v, current[k]) for k, v in previous.items()
        )
    if isinstance(previous, list):
        return (
            isinstance(current, list)
            and len(current) >= len(previous)
            and all(grows(p, c) for p, c in zip(previous, current, strict=False))
        )
    if isinstance(previous, str):
        return isinstance(current, str) and current.startswith(previous)
    return bool(previous == current)


def _strict_schema(schema: Any) -> Any:
    """The schema made fit for OpenAI's strict mode, or ``None`` when it cannot be."""
    if isinstance(schema, list):
        items = [_strict_schema(s) for s in schema]
        return None if any(i is None for i in items) else items
    if not isinstance(schema, dict):
        return schema
    if _NOT_STRICT & set(schema):
        return None
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            mapped = {k: _strict_schema(v) for k, v in value.items()}
            if any(v is None for v in mapped.values()):
                return None
            out[key] = mapped
        elif isinstance(value, dict | list):
            converted = _strict_schema(value)
            if converted is None:
                return None
            out[key] = converted
        else:
            out[key] = value
    if out.get("type") == "object":
        properties = out.get("properties", {})
        if set(out.get("required", ())) != set(properties):
            return None  # strict mode requires every property
        out["additionalProperties"] = False
    return out
