"""The wire: Server-Sent Events out of a response body, and the deadlines of reading it."""

from __future__ import annotations

import asyncio
import codecs
import math
import ssl

import anyio
import httpx2

from rxagent._text import clip
from rxagent.providers.openai._errors import EventTooLarge, MalformedStream

__all__ = ["TRANSPORT_ERRORS", "Deadlines", "SSEDecoder"]

#: SSE field names that may stand alone on a line (a field with no value).
_FIELDS = frozenset({"data", "event", "id", "retry"})
#: What reading a response body raises when the connection breaks.
TRANSPORT_ERRORS = (httpx2.HTTPError, httpx2.StreamError, anyio.EndOfStream, ssl.SSLError, OSError)


class SSEDecoder:
    """Server-Sent Events out of the bytes of a response body, as they arrive.

    Lines end in ``\n`` (or ``\r\n``); an event is its ``data`` lines, dispatched
    at the blank line that ends it; comments (``: ...``) keep a connection alive
    and are counted, not dispatched. A line that has not ended yet is kept as
    pieces and joined once, when it ends, so a long line arriving over many
    reads costs time linear in its length. One event (its data and the line
    still arriving) may hold at most ``limit`` characters.
    """

    __slots__ = (
        "_data",
        "_decode",
        "_event",
        "_limit",
        "_owner",
        "_pending",
        "_pending_size",
        "_size",
        "comments",
    )

    def __init__(self, limit: int, owner: str = "OpenAIProvider") -> None:
        self._limit = limit
        self._owner = owner
        self._decode = codecs.getincrementaldecoder("utf-8")().decode
        self._pending: list[str] = []
        self._pending_size = 0
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        #: Comments since the last event.
        self.comments = 0

    def feed(self, block: bytes) -> list[tuple[str, str]]:
        """The events (``(event name, data)``) that ``block`` completes."""
        try:
            text = self._decode(block)
        except UnicodeDecodeError as error:
            raise MalformedStream(f"the stream is not UTF-8: {error}") from None
        if (
            text[:6] == "data: "
            and text[-2:] == "\n\n"
            and text.find("\n") == len(text) - 2
            and not self._pending
            and not self._data
        ):
            # The usual block: one whole event of one data line, nothing left over.
            value = text[6:-2]
            if value[-1:] == "\r":
                value = value[:-1]
            if len(value) > self._limit:
                raise self.too_large()
            if self.comments:
                self.comments = 0
            return [("", value)]
        lines = text.split("\n")
        rest = lines.pop()
        if self._pending:
            if not lines:  # still no line ended: keep the piece
                self._keep(rest)
                return []
            self._pending.append(lines[0])
            lines[0] = "".join(self._pending)
            self._pending = []
            self._pending_size = 0
        out: list[tuple[str, str]] = []
        data = self._data
        # (One loop, inlined: this runs for every event of every stream.)
        for line in lines:
            if line[-1:] == "\r":
                line = line[:-1]
            if not line:
                if data:
                    out.append((self._event, data[0] if len(data) == 1 else "\n".join(data)))
                    data = self._data = []
                    self._size = 0
                    self._event = ""
                    self.comments = 0
            elif line[:5] == "data:":
                value = line[6:] if line[5:6] == " " else line[5:]
                self._size += len(value)
                if self._size > self._limit:
                    raise self.too_large()
                data.append(value)
            elif line[:1] == ":":
                self.comments += 1  # servers send comments to keep the connection alive
            elif line[:6] == "event:":
                self._event = line[6:].strip()
            elif not (line[:3] == "id:" or line[:6] == "retry:" or line in _FIELDS):
                raise MalformedStream(
                    f"the server sent a line that is not Server-Sent Events: {clip(line)!r}"
                )
        if rest:
            self._keep(rest)
        return out

    def _keep(self, piece: str) -> None:
        """Keep a piece of a line that has not ended (within the size limit)."""
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size + self._size > self._limit:
            raise self.too_large()

    def flush(self) -> list[tuple[str, str]]:
        """The body ended: the last event, when it lacked its blank line."""
        try:
            self._decode(b"", True)
        except UnicodeDecodeError as error:
            raise MalformedStream(f"the stream is not UTF-8: {error}") from None
        return self.feed(b"\n\n")  # end the last line, and the event

    def too_large(self) -> EventTooLarge:
        return EventTooLarge(
            f"the server sent an event larger than max_event_size={self._limit} characters; "
            f"pass {self._owner}(max_event_size=...) to accept larger ones"
        )


class Deadlines:
    """The deadlines of one attempt, checked lazily by one timer re-armed when it fires.

    Until the response head arrives the deadline is ``first_byte`` after the
    start; after it, ``idle`` after the last data event (comments are not
    progress); always at most ``total`` after the start. Progress only moves a
    number, so a stream of many small events costs no timer work; the timer
    fires at the earliest possible deadline and, if progress moved it, sleeps
    again. A deadline that passes while the attempt waits for the network
    cancels that wait (the attempt takes the cancellation back and raises a
    timeout error); one that passes while the attempt is busy is seen at its
    next read.
    """

    __slots__ = (
        "_cancelled",
        "_handle",
        "_loop",
        "_task",
        "expired",
        "first_byte",
        "head",
        "idle",
        "last",
        "started",
        "total",
        "waiting",
    )

    def __init__(self, first_byte: float | None, idle: float | None, total: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self.first_byte = first_byte
        self.idle = idle
        self.total = total
        self.started = self.last = self._loop.time()
        self.head = False
        #: Which deadline passed: "first_byte", "idle" or "total".
        self.expired: str | None = None
        #: Whether the attempt is waiting for the network (then a deadline cancels it).
        self.waiting = False
        self._cancelled = False
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def _deadline(self) -> tuple[float, str]:
        at, which = math.inf, "idle"
        if not self.head:
            if self.first_byte is not None:
                at, which = self.started + self.first_byte, "first_byte"
        elif self.idle is not None:
            at = self.last + self.idle
        if self.total is not None and self.started + self.total < at:
            at, which = self.started + self.total, "total"
        return at, which

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        at, _ = self._deadline()
        if at != math.inf:
            self._handle = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        at, which = self._deadline()
        if which == "idle" and not self.waiting:
            # Busy elsewhere (a consumer of the chunks): that is not the server's silence.
            self.last = now
            at, which = self._deadline()
        if now < at:
            self._handle = self._loop.call_at(at, self._fire)
            return
        self.expired = which
        if self.waiting and self._task is not None:
            self._cancelled = True
            self._task.cancel()

    def head_arrived(self) -> None:
        self.head = True
        self.last = self._loop.time()
        self._arm()  # the idle deadline may come before the first-byte one

    def progress(self) -> None:
        self.last = self._loop.time()

    def took_back(self) -> bool:
        """Whether a cancellation was this object's doing (it is then taken back)."""
        if not self._cancelled or self._task is None:
            return False
        self._cancelled = False
        # Another cancellation may have come as well: that one stands.
        return self._task.uncancel() == 0

    def why(self) -> str:
        """Which bound passed, as the option that sets it."""
        if self.expired == "total":
            return f"within total_timeout={self.total:g} s"
        if self.expired == "first_byte":
            return f"within first_byte_timeout={self.first_byte:g} s"
        return f"for {self.idle:g} s (read_timeout)"

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


#: SSE field names that may stand alone on a line (a field with no value).
