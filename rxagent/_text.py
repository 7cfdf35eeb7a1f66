"""Small text helpers shared by the library: previews of values for messages and views,
and text made sendable (no lone surrogates)."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["clip", "one_line", "preview", "sendable", "sendable_data"]

_SURROGATE = re.compile("[\ud800-\udfff]")


def clip(text: str | bytes, limit: int = 200, *, ellipsis: str = "...") -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``ellipsis`` when cut."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) <= limit:
        return text
    return text[: max(1, limit - len(ellipsis))] + ellipsis


def one_line(value: Any, limit: int = 72, *, ellipsis: str = "...") -> str:
    """A value as one line of at most ``limit`` characters (JSON for what is not text)."""
    text = value if isinstance(value, str) else preview(value)
    return clip(" ".join(text.split()), limit, ellipsis=ellipsis)


def preview(value: Any) -> str:
    """A value as JSON text where it can be (``repr`` where it cannot, e.g. a cycle)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        return repr(value)


def sendable(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8.

    A lone surrogate is what ``os.listdir``, ``sys.argv`` or ``os.environ`` give for
    bytes that are not valid in the file-system encoding (``"\\udce9"`` for a
    Latin-1 ``é``), and what ``json.loads`` gives for an escaped half of a pair; no
    JSON encoder or HTTP client can send it. A whole pair of surrogates becomes the
    character it stands for.
    """
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def sendable_data(value: Any) -> Any:
    """JSON data with every string (keys too) made :func:`sendable`; ``value`` itself
    when nothing needed it."""
    if isinstance(value, str):
        return sendable(value)
    if isinstance(value, dict):
        items = [(sendable_data(k), sendable_data(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        out = [sendable_data(v) for v in value]
        if all(a is b for a, b in zip(out, value, strict=True)):
            return value
        return tuple(out) if isinstance(value, tuple) else out
    return value
