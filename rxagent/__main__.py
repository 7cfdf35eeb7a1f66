"""``python -m rxagent`` (or ``rxagent``): a streaming agent run, live in the terminal.

The agent has three demo tools: ``lookup`` (slow; streams its progress),
``calculate`` and ``weather`` (fails now and then). The run is drawn as it
happens: tokens as they stream, one line per tool call with a spinner and then
its result or error (parallel calls together), and a closing summary.

With no ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``--api-key`` or ``--base-url``
(or with ``--offline``), the model is an offline demo model served by
:class:`rxagent.testing.LoopbackServer` and reached through the real
``OpenAIProvider``, so the whole HTTP path runs. ``--json`` prints the events as
JSON lines instead (pipe them into ``jq``). ``rxagent web`` serves the chat page on
the same agent (see :mod:`rxagent.web.demo`).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import operator
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import reactivex as rx

import rxagent as ra
from rxagent import _terminal
from rxagent.aio import loop_scheduler
from rxagent.events import AgentEvent, dumps

DEFAULT_PROMPT = "Tell me about ReactiveX, work out 17 * 23 + 4, and check the weather in Oslo."
INSTRUCTIONS = (
    "You are the assistant in a terminal demo of rxagent, a library for streaming agents. "
    "Say in one short sentence what you will do, then call the tools you need; call "
    "independent tools together in one turn. If a tool fails, you may try it once more. "
    "Answer in at most four sentences."
)

#: Scales every wait of the demo (the slow tool, the offline model's typing); 0: none.
_pace = 1.0


# -- the demo tools -----------------------------------------------------------------------
_KNOWLEDGE = {
    "reactivex": (
        "ReactiveX is an API for asynchronous programming with observable streams; "
        "RxPY is its Python implementation, and rxagent builds agents from its operators."
    ),
    "rxagent": (
        "rxagent runs an LLM agent as an Observable of events: tokens, tool calls and "
        "results, which any number of observers can watch."
    ),
}


@ra.tool
async def lookup(topic: str) -> AsyncIterator[Any]:
    """Look a topic up in a slow knowledge base; reports its progress as it goes.

    Args:
        topic: What to look up, for example "ReactiveX".
    """
    stages = ("connecting", "searching", "reading", "summarizing")
    for done, stage in enumerate(stages, 1):
        yield {"stage": stage, "done": done, "total": len(stages)}
        await asyncio.sleep(0.35 * _pace)
    yield _KNOWLEDGE.get(
        topic.strip().lower(),
        f"The knowledge base has no entry for {topic!r}; it knows ReactiveX and rxagent.",
    )


_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@ra.tool
def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Args:
        expression: The expression, for example "17 * 23 + 4".
    """

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            if isinstance(node.op, ast.Pow) and abs(value(node.right)) > 100:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")

    result = value(ast.parse(expression, mode="eval").body)
    return int(result) if isinstance(result, float) and result.is_integer() else result


class _WeatherService:
    """A weather service that fails every other call, so the demo shows both outcomes."""

    calls = 0


@ra.tool
async def weather(city: str) -> dict[str, Any]:
    """Current weather for a city, from a service that fails now and then (try again).

    Args:
        city: The city, for example "Oslo".
    """
    await asyncio.sleep(0.25 * _pace)
    _WeatherService.calls += 1
    if _WeatherService.calls % 2 == 1:
        raise ConnectionError("the weather service timed out")
    skies = ("clear", "cloudy", "light rain", "sunny", "windy")
    seed = sum(map(ord, city.lower()))
    return {"city": city, "sky": skies[seed % len(skies)], "celsius": 4 + seed % 19}


TOOLS: list[ra.Tool[..., Any]] = [lookup, calculate, weather]


# -- the offline model --------------------------------------------------------------------
@dataclass
class _Result:
    name: str
    content: str

    @property
    def failed(self) -> bool:
        return self.content.startswith(("Error", "Cancelled", "Rejected"))


def _tool_results(messages: list[dict[str, Any]]) -> list[_Result]:
    names: dict[str, str] = {}
    results: list[_Result] = []
    for message in messages:
        for call in message.get("tool_calls") or ():
            names[call.get("id", "")] = call.get("function", {}).get("name", "")
        if message.get("role") == "tool":
            content = message.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            results.append(_Result(names.get(message.get("tool_call_id", ""), ""), text))
    return results


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def offline_model(pace: float) -> Callable[[Any], Any]:
    """The offline demo model: a script function for the loopback server.

    It answers whatever it is asked with the same plan: three tool calls at once,
    another try of the weather when it failed, then an answer built from the results
    it was sent, so the answer shows the tool results made the round trip.
    """
    from rxagent import testing as t

    delay = 0.03 * pace

    def respond(request: t.RecordedRequest) -> t.Turn:
        results = _tool_results(request.messages)
        if not results:
            return t.reply(
                *_words("I'll look that up, do the sum and check the weather, all at once. "),
                t.call("lookup", {"topic": "ReactiveX"}),
                t.call("calculate", {"expression": "17 * 23 + 4"}),
                t.call("weather", {"city": "Oslo"}),
                chunk_delay=delay,
            )
        forecasts = [r for r in results if r.name == "weather"]
        if forecasts and forecasts[-1].failed and len(forecasts) < 3:
            return t.reply(
                *_words("The weather service failed; trying it once more. "),
                t.call("weather", {"city": "Oslo"}),
                chunk_delay=delay,
            )
        return t.reply(*_words(_final_answer(results)), chunk_delay=delay)

    return respond


def _final_answer(results: list[_Result]) -> str:
    found = {r.name: r for r in results if not r.failed}
    parts = []
    if "lookup" in found:
        parts.append(found["lookup"].content.strip('"'))
    if "calculate" in found:
        parts.append(f"17 * 23 + 4 = {found['calculate'].content}.")
    if "weather" in found:
        try:
            report = json.loads(found["weather"].content)
            parts.append(f"In {report['city']} it is {report['sky']} at {report['celsius']} °C.")
        except (ValueError, KeyError, TypeError):
            parts.append(f"The weather service says: {found['weather'].content}.")
    else:
        parts.append("The weather service is down, so no forecast today.")
    return " ".join(parts)


# -- the command line ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rxagent",
        description=(
            "Run a streaming rxagent agent with demo tools and watch it live. Without "
            "OPENAI_API_KEY, OPENAI_BASE_URL, --api-key or --base-url it runs offline on a "
            "built-in demo model."
        ),
    )
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="what to ask")
    add_model_options(parser)
    parser.add_argument(
        "--max-tool-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="tool calls run at once (0: no limit; default: %(default)s)",
    )
    parser.add_argument("--max-steps", type=int, default=6, metavar="N", help="at most N steps")
    parser.add_argument("--json", action="store_true", help="print the events as JSON lines")
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the model (shared with ``rxagent web``)."""
    parser.add_argument("--model", default="gpt-4o-mini", help="model name (default: %(default)s)")
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY)")
    parser.add_argument("--offline", action="store_true", help="use the offline demo model")
    parser.add_argument(
        "--pace",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="scale the demo's waits (slow tool, offline typing); 0 for none",
    )


def is_offline(args: argparse.Namespace) -> bool:
    """Whether the options (and the environment) leave the offline demo model to use."""
    return bool(
        args.offline
        or not (
            args.base_url
            or args.api_key
            or os.environ.get("OPENAI_API_KEY")
            or os.environ.get("OPENAI_BASE_URL")
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the exit status is 0 on success, 1 when the run failed.

    ``rxagent web ...`` serves the chat page instead (the ``rxagent[web]`` extra), and
    ``rxagent worker module:agents`` runs a worker of a Redis pool (``rxagent[redis]``).
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["web"]:
        from rxagent.web.demo import main as web_main

        return web_main(argv[1:])
    if argv[:1] == ["worker"]:
        from rxagent.redis._cli import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.max_tool_concurrency < 0 or args.max_steps < 1 or args.pace < 0:
        build_parser().error("--max-tool-concurrency, --max-steps and --pace must be positive")
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    global _pace
    _pace = args.pace
    _WeatherService.calls = 0  # every run shows a failure first, then a success
    out = sys.stdout
    notes = sys.stderr if args.json else sys.stdout
    offline = is_offline(args)
    server = None
    try:
        if offline:
            from rxagent.testing import LoopbackServer

            server = LoopbackServer(offline_model(args.pace), model="rxagent-demo").start()
            provider = server.provider(read_timeout=30.0)
            print(
                "rxagent demo · offline: a built-in demo model on a loopback server "
                "(set OPENAI_API_KEY or pass --base-url for a real model)",
                file=notes,
                flush=True,
            )
        else:
            from rxagent.providers.openai import OpenAIProvider

            provider = OpenAIProvider(args.model, base_url=args.base_url, api_key=args.api_key)
            print(f"rxagent demo · {args.model} at {provider.base_url}", file=notes, flush=True)
        agent = ra.Agent(
            provider,
            tools=TOOLS,
            instructions=INSTRUCTIONS,
            policy=ra.policies.until_no_tool_calls() | ra.policies.max_steps(args.max_steps),
            max_tool_concurrency=args.max_tool_concurrency or None,
        )
        return await _watch(agent.run(args.prompt), args, out)
    finally:
        if server is not None:
            server.stop()


async def _watch(run: ra.Run, args: argparse.Namespace, out: Any) -> int:
    view: _terminal.View | None = None
    closed = False

    def close() -> None:  # the reader went away (`rxagent | head`): stop the run
        nonlocal closed
        if not closed:
            closed = True
            # Later writes (and the flush at exit) go nowhere instead of failing.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            run.cancel()

    if args.json:

        def print_json(event: AgentEvent) -> None:
            if closed:
                return
            try:
                out.write(dumps(event) + "\n")
                out.flush()
            except BrokenPipeError:
                close()

        run.pipe(ra.ops.materialize()).subscribe(print_json)
    else:
        live = _terminal.is_live(out)
        color = _terminal.wants_color(out)
        view = (
            _terminal.LiveView(out, color=color) if live else _terminal.PlainView(out, color=color)
        )
        view.on_closed = close
        view.write(view.paint(f"> {args.prompt}", "1") + "\n")
        run.subscribe(view.on_event)

    # The spinners turn a dozen times a second, on the event loop's clock.
    def tick(_: int) -> None:
        if view is not None:
            view.tick()

    ticker = rx.interval(0.08, scheduler=loop_scheduler()).subscribe(tick)
    try:
        await ra.collect_final(run)
        return 0
    except ra.AgentError as error:
        if view is not None:
            view.failed(error)
            if error.partial is not None:
                line = _terminal.summary(
                    error.partial,
                    seconds=0.0 if view is None else _elapsed(view),
                    failed_calls=view.failed_calls,
                    rule=view.symbols.rule,
                )
                view.write(view.paint(line, "2") + "\n")
        return 1
    except asyncio.CancelledError:  # Ctrl-C: stop the run, show how far it got
        run.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(ra.collect_final(run), 2)
        return 130
    finally:
        ticker.dispose()


def _elapsed(view: _terminal.View) -> float:
    import time

    return time.monotonic() - view.started


if __name__ == "__main__":
    sys.exit(main())
