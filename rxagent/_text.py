"""Small text helpers shared by the library: previews of values for messages and views."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["clip", "one_line", "preview"]


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
