"""Tools: ``@tool``, JSON schemas from signatures, argument validation, invocation.

A tool is a plain function, decorated::

    @ra.tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict:
        '''Current weather for a city.'''

The function may be a ``def`` (run in a worker thread, so it never blocks the
event loop), an ``async def``, an async generator, or a ``def`` returning an
Observable. For the last two, every item but the last is progress (a
``ToolProgress`` event) and the last is the result.

The schema comes from the signature through pydantic: ``Annotated[..., Field(...)]``
descriptions and constraints are kept, the docstring is the description, and a
Google-style ``Args:`` section describes the parameters that have no
description of their own. Arguments are validated against it before the call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, ParamSpec, TypeAlias, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from reactivex import Observable

from rxagent._text import clip, sendable_data
from rxagent.aio import to_async_iterable
from rxagent.approval import EXECUTE, ApprovalRequest, Decision, Strategy, as_strategy
from rxagent.errors import ToolArgumentsError, ToolOutputError, UnknownToolError
from rxagent.events import _Event

__all__ = [
    "BoundCall",
    "JoinPolicy",
    "Tool",
    "ToolRegistry",
    "ToolSpec",
    "Toolset",
    "current_call",
    "default_executor",
    "jsonable",
    "output_text",
    "parse_arguments",
    "tool",
    "tool_output",
]

log = logging.getLogger("rxagent")

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()

#: The id of the tool call being run, inside a tool (``None`` outside one): read it
#: with ``current_call.get()``. It is the call's idempotency key: a call runs at least
#: once, and where a run is recovered after its worker was lost (``rxagent.redis``),
#: the calls its interrupted step had started run again with the same id. Sync tools
#: (run in worker threads) see it too.
current_call: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rxagent_current_call", default=None
)


class JoinPolicy(StrEnum):
    """What a step does when some of its tool calls fail.

    * ``FAIL_FAST``: the first failure cancels the calls still running and fails the step.
    * ``JOIN_ALL``: every call runs; the results come out in order, then one
      aggregated :class:`~rxagent.errors.ToolsFailed` error.
    * ``REPORT_TO_MODEL``: a failure becomes a tool message the model reads, and
      the loop goes on.
    """

    FAIL_FAST = "fail_fast"
    JOIN_ALL = "join_all"
    REPORT_TO_MODEL = "report_to_model"


@dataclass(frozen=True)
class ToolSpec:
    """A provider-neutral description of a tool: what a provider sends the model."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    strict: bool = False

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class BoundCall:
    """A call whose arguments passed validation: ready to run."""

    tool: Tool[..., Any]
    #: The arguments as the model sent them (JSON data).
    arguments: dict[str, Any]
    #: The validated keyword arguments the function is called with.
    kwargs: dict[str, Any]


_executor: Executor | None = None


def default_executor() -> Executor:
    """The thread pool synchronous tools run in (64 threads, made on first use)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="rxagent-tool")
    return _executor


class Tool(Generic[P, R]):
    """A function the model can call. Calling the tool calls the function."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        strict: bool = False,
        metadata: Mapping[str, Any] | None = None,
        approval: Strategy | Decision | None = None,
        _namespace: Mapping[str, Any] | None = None,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"a tool's timeout must be positive, got {timeout!r}")
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self.description = description if description is not None else summary
        self.timeout = timeout
        self.strict = strict
        self.metadata: dict[str, Any] = dict(metadata or {})
        #: The tool's own approval strategy (``None``: its toolset's, else execute).
        self.approval = as_strategy(approval)
        # Names in string annotations may be local to where the tool was defined.
        namespace = _namespace if _namespace is not None else _caller_locals(1)
        try:
            hints = get_type_hints(fn, localns=dict(namespace), include_extras=True)
        except Exception as error:
            raise TypeError(f"cannot read the type hints of tool {self.name!r}: {error}") from error
        self.args_model = _args_model(fn, self.name, arg_docs, hints)
        self.parameters: dict[str, Any] = _clean_schema(self.args_model.model_json_schema())
        self._is_async_gen = inspect.isasyncgenfunction(fn)
        self._is_coroutine = inspect.iscoroutinefunction(fn)
        self._returns_observable = _is_observable_type(hints.get("return"))
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters, self.strict)

    def bind(self, arguments: str | Mapping[str, Any], call_id: str = "") -> BoundCall:
        """Parse and validate ``arguments``; raises :class:`ToolArgumentsError`.

        Text in the arguments is made sendable (lone surrogates, as an escaped
        ``"\\udce9"`` gives, become U+FFFD) before the tool or an event sees it.
        """
        data = parse_arguments(self.name, arguments, call_id)
        try:
            validated = self.args_model.model_validate(data)
        except RecursionError:
            raise _too_deep(self.name, call_id) from None
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}"
                for e in error.errors(include_url=False)
            )
            raise ToolArgumentsError(
                f"arguments for tool {self.name!r} do not fit its schema: {problems}",
                call_id=call_id,
                tool_name=self.name,
            ) from None
        kwargs = {k: getattr(validated, k) for k in type(validated).model_fields}
        return BoundCall(self, data, kwargs)

    async def stream(
        self,
        kwargs: Mapping[str, Any],
        *,
        executor: Executor | None = None,
        call_id: str | None = None,
    ) -> AsyncIterator[tuple[bool, Any]]:
        """Run the tool: yields ``(False, progress)`` items, then ``(True, result)``.

        ``call_id`` is what the tool reads from :data:`current_call` while it runs.
        """
        if call_id is not None:
            # Set in the task that iterates this generator (and copied into the worker
            # thread below); the task's context ends with it, so there is nothing to reset.
            current_call.set(call_id)
        fn: Callable[..., Any] = self.fn
        if self._is_async_gen:
            async for item in _last_is_result(fn(**kwargs)):
                yield item
            return
        if self._is_coroutine:
            yield True, await fn(**kwargs)
            return
        if self._returns_observable:
            result = fn(**kwargs)
        else:
            loop = asyncio.get_running_loop()
            context = contextvars.copy_context()
            result = await loop.run_in_executor(
                executor or default_executor(), functools.partial(context.run, fn, **kwargs)
            )
        if isinstance(result, Observable):
            async for item in _last_is_result(to_async_iterable(result)):
                yield item
        else:
            yield True, result


def parse_arguments(
    name: str, arguments: str | Mapping[str, Any], call_id: str = ""
) -> dict[str, Any]:
    """A call's arguments as a JSON object, its text made sendable; raises
    :class:`ToolArgumentsError` when they are not JSON, not an object, or nested too
    deeply to read (empty text is no arguments)."""
    data: Any
    if isinstance(arguments, str):
        try:
            data = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise ToolArgumentsError(
                f"arguments for tool {name!r} are not valid JSON "
                f"({error.msg} at position {error.pos}): {clip(arguments)}",
                call_id=call_id,
                tool_name=name,
            ) from None
        except RecursionError:
            raise _too_deep(name, call_id) from None
    else:
        data = dict(arguments)
    try:
        data = sendable_data(data)
    except RecursionError:
        raise _too_deep(name, call_id) from None
    if not isinstance(data, dict):
        raise ToolArgumentsError(
            f"arguments for tool {name!r} must be a JSON object, got {type(data).__name__}",
            call_id=call_id,
            tool_name=name,
        )
    return data


def _too_deep(name: str, call_id: str) -> ToolArgumentsError:
    return ToolArgumentsError(
        f"arguments for tool {name!r} are nested too deeply to read",
        call_id=call_id,
        tool_name=name,
    )


async def _last_is_result(items: AsyncIterator[Any]) -> AsyncIterator[tuple[bool, Any]]:
    previous = _MISSING
    async for item in items:
        if isinstance(item, _Event):
            # An agent event (a sub-agent's) is always progress, never the result: it
            # goes on at once rather than one item late.
            yield False, item
            continue
        if previous is not _MISSING:
            yield False, previous
        previous = item
    yield True, (None if previous is _MISSING else previous)


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    strict: bool = False,
    metadata: Mapping[str, Any] | None = None,
    approval: Strategy | Decision | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...
def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    strict: bool = False,
    metadata: Mapping[str, Any] | None = None,
    approval: Strategy | Decision | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Make a function a :class:`Tool`: ``@tool`` or ``@tool(name=..., timeout=...)``.

    ``timeout`` (seconds) fails a call that runs longer with ``ToolTimeoutError``.
    ``approval`` is the tool's approval strategy (see :mod:`rxagent.approval`);
    ``metadata`` is yours, and strategies see it.
    """

    namespace = _caller_locals(1)

    def wrap(f: Callable[P, R]) -> Tool[P, R]:
        return Tool(
            f,
            name=name,
            description=description,
            timeout=timeout,
            strict=strict,
            metadata=metadata,
            approval=approval,
            _namespace=namespace,
        )

    return wrap(fn) if fn is not None else wrap


def as_tool(item: Tool[..., Any] | Callable[..., Any]) -> Tool[..., Any]:
    """``item`` if it is a Tool, else the function made into one."""
    return item if isinstance(item, Tool) else Tool(item, _namespace={})


class Toolset:
    """A group of tools sharing an approval strategy (a tool's own strategy wins).

    An agent may take several toolsets (and loose tools); a tool name that two of
    them hold is an error when the agent is made.

    A toolset's ``tools`` may change after an agent took it (an MCP server that
    announces a new list, say): whoever changes them raises ``revision``, and the
    agent's registry rebuilds itself at its next use (the next provider request).
    """

    def __init__(
        self,
        tools: Iterable[Tool[..., Any] | Callable[..., Any]],
        *,
        approval: Strategy | Decision | None = None,
        name: str | None = None,
    ) -> None:
        self.tools = [as_tool(t) for t in tools]
        self.approval = as_strategy(approval)
        self.name = name or "toolset"
        #: Raised by whoever changes ``tools``, so registries holding the toolset see it.
        self.revision = 0

    def __repr__(self) -> str:
        return f"Toolset({self.name!r}, {[t.name for t in self.tools]})"


ToolsInput: TypeAlias = Iterable["Tool[..., Any] | Toolset | Callable[..., Any]"]


class ToolRegistry:
    """Tools by name, each with its approval strategy; a name given twice is an error.

    The registry keeps the toolsets it was made from and rebuilds its table when
    one of them changed (its ``revision`` moved) since: every read (``specs``,
    ``get``, ``bind``, ...) sees the toolsets' current tools. A name that a change
    makes clash keeps its first holder (in the order the tools were given); the
    newcomer is left out, with a warning on the ``rxagent`` logger.
    """

    def __init__(self, tools: ToolsInput = ()) -> None:
        self._tools: dict[str, Tool[..., Any]] = {}
        self._owners: dict[str, str] = {}
        self._strategies: dict[str, Strategy] = {}
        # What the table is built from, in order, and each toolset's revision at the build.
        self._sources: list[Tool[..., Any] | Toolset] = []
        self._seen: list[tuple[Toolset, int]] = []
        for item in tools:
            if isinstance(item, ToolRegistry):
                self._sources.extend(item._sources)
            elif isinstance(item, Toolset):
                self._sources.append(item)
            else:
                self._sources.append(as_tool(item))
        self._build(strict=True)

    def _build(self, *, strict: bool) -> None:
        self._tools, self._owners, self._strategies = {}, {}, {}
        self._seen = [(s, s.revision) for s in self._sources if isinstance(s, Toolset)]
        for source in self._sources:
            if isinstance(source, Toolset):
                for t in source.tools:
                    owner = f"toolset {source.name!r}"
                    self._add(t, owner, t.approval or source.approval, strict=strict)
            else:
                self._add(source, "the agent's tools", source.approval, strict=strict)

    def _sync(self) -> None:
        """Rebuild the table if a toolset changed since it was built."""
        if any(toolset.revision != seen for toolset, seen in self._seen):
            self._build(strict=False)

    def _add(
        self, t: Tool[..., Any], owner: str, strategy: Strategy | None, *, strict: bool = True
    ) -> None:
        if t.name in self._tools:
            where = (
                owner if owner == self._owners[t.name] else f"{self._owners[t.name]} and {owner}"
            )
            if strict:
                raise ValueError(f"two tools are named {t.name!r} (in {where})")
            log.warning("two tools are named %r (in %s); the second is left out", t.name, where)
            return
        self._tools[t.name] = t
        self._owners[t.name] = owner
        if strategy is not None:
            self._strategies[t.name] = strategy

    def __iter__(self) -> Iterator[Tool[..., Any]]:
        self._sync()
        return iter(self._tools.values())

    def __len__(self) -> int:
        self._sync()
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        self._sync()
        return name in self._tools

    def get(self, name: str) -> Tool[..., Any] | None:
        self._sync()
        return self._tools.get(name)

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        self._sync()
        return tuple(t.spec for t in self._tools.values())

    def bind(self, call_id: str, name: str, arguments: str) -> BoundCall:
        """The tool ``name`` bound to ``arguments``; raises a ``ToolError`` when it cannot be."""
        self._sync()
        found = self._tools.get(name)
        if found is None:
            available = ", ".join(sorted(self._tools)) or "none"
            raise UnknownToolError(
                f"unknown tool {name!r}; available tools: {available}",
                call_id=call_id,
                tool_name=name,
            )
        return found.bind(arguments, call_id)

    def decide(self, call_id: str, bound: BoundCall) -> Decision:
        """What the call's approval strategy says (execute, when it has none)."""
        self._sync()
        strategy = self._strategies.get(bound.tool.name)
        if strategy is None:
            return EXECUTE
        decision = strategy(
            ApprovalRequest(call_id, bound.tool.name, bound.arguments, bound.tool.metadata)
        )
        if not isinstance(decision, Decision):
            raise TypeError(
                f"the approval strategy of tool {bound.tool.name!r} returned {decision!r}, "
                "not a Decision"
            )
        return decision


def output_text(output: Any) -> str:
    """A tool's output as the text of its tool message (JSON unless it is a string)."""
    data = jsonable(output)
    return data if isinstance(data, str) else json.dumps(data)


def jsonable(output: Any) -> Any:
    """``output`` as JSON data: pydantic models, dataclasses, ... converted, bytes read
    as UTF-8 text, other objects as ``str(obj)``, and text made sendable (lone
    surrogates become U+FFFD). Raises ``ValueError`` (``UnicodeDecodeError`` for
    bytes that are not UTF-8, a circular reference, ...) when it cannot be JSON."""
    return sendable_data(to_jsonable_python(output, fallback=str))


def tool_output(value: Any, tool_name: str, call_id: str = "", *, progress: bool = False) -> Any:
    """What a tool returned (or, with ``progress``, reported as progress), as JSON data
    (see :func:`jsonable`); raises :class:`~rxagent.errors.ToolOutputError`, naming the
    type, when it cannot be JSON.

    Bytes are read as UTF-8 text; bytes that are not (an image, a zip) are an error
    rather than base64 sent to the model unasked: the tool decides how binary data is
    shown to a model (encoded, summarised, stored and referred to).
    """
    try:
        return jsonable(value)
    except (ValueError, TypeError, RecursionError) as error:
        verb = "reported progress as" if progress else "returned"
        kind = type(value).__name__
        if isinstance(error, UnicodeDecodeError):
            what = (
                "bytes"
                if isinstance(value, bytes | bytearray | memoryview)
                else f"{_a(kind)} holding bytes"
            )
            problem = (
                f"{what} that are not UTF-8 text; return str, "
                "or encode binary data as text yourself (base64)"
            )
        elif isinstance(error, RecursionError):
            problem = f"{_a(kind)} nested too deeply to turn into JSON"
        else:
            problem = f"{_a(kind)} that cannot be turned into JSON: {error}"
        failure = ToolOutputError(
            f"tool {tool_name!r} {verb} {problem}", call_id=call_id, tool_name=tool_name
        )
        raise failure from error


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


# -- schema from signature ----------------------------------------------------------


def _caller_locals(depth: int) -> dict[str, Any]:
    """The local names of the frame ``depth`` levels above the caller."""
    frame = sys._getframe(depth + 1)
    return dict(frame.f_locals) if frame.f_code.co_name != "<module>" else {}


def _args_model(
    fn: Callable[..., Any], name: str, arg_docs: Mapping[str, str], hints: Mapping[str, Any]
) -> type[BaseModel]:
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"tool {name!r} cannot take *args or **kwargs ({param})")
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"tool {name!r} cannot take positional-only parameters ({param})")
        annotation = hints.get(param.name, Any)
        default: Any = ... if param.default is inspect.Parameter.empty else param.default
        doc = arg_docs.get(param.name)
        if doc:
            if isinstance(default, FieldInfo):
                if default.description is None:
                    default.description = doc
            elif not _has_description(annotation):
                default = Field(default, description=doc)
        fields[param.name] = (annotation, default)
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", name)) + "Args"
    model: type[BaseModel] = create_model(
        model_name, __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _has_description(annotation: Any) -> bool:
    return any(
        isinstance(m, FieldInfo) and m.description for m in getattr(annotation, "__metadata__", ())
    )


def _is_observable_type(hint: Any) -> bool:
    origin = getattr(hint, "__origin__", hint)
    return isinstance(origin, type) and issubclass(origin, Observable)


def _clean_schema(schema: Any) -> Any:
    """The schema without pydantic's generated titles (noise in a prompt)."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                out[key] = {k: _clean_schema(v) for k, v in value.items()}
            else:
                out[key] = _clean_schema(value)
        return out
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params)\s*:\s*$")
_OTHER_SECTION = re.compile(
    r"^(Returns?|Raises|Yields|Examples?|Notes?|Attributes|See Also)\s*:\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (without the ``Args:`` section) and each argument's text."""
    lines = doc.splitlines()
    kept: list[str] = []
    args: dict[str, str] = {}
    i = 0
    while i < len(lines):
        if _SECTION.match(lines[i].strip()):
            i += 1
            current: str | None = None
            indent: int | None = None
            while i < len(lines):
                line = lines[i]
                stripped = line.strip()
                if stripped and _OTHER_SECTION.match(stripped):
                    break
                width = len(line) - len(line.lstrip())
                if stripped and (indent is None or width <= indent):
                    match = _ARG_LINE.match(stripped)
                    if match is None:
                        break
                    indent = width
                    current = match.group(1).lstrip("*")
                    args[current] = match.group(3).strip()
                elif stripped and current is not None:
                    args[current] = f"{args[current]} {stripped}".strip()
                i += 1
            continue
        kept.append(lines[i])
        i += 1
    return "\n".join(kept).strip(), args
