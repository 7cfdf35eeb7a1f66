"""The agents of the scale-out example: ``rxagent worker examples.scale_out.agents:agents``.

The demo agent of ``rxagent web`` (three tools; ``calculate`` asks a human first). With
``OPENAI_API_KEY`` (or ``OPENAI_BASE_URL``) set, it runs on that model; without, on
the offline demo model, served by a loopback server in each worker process.
``SCALE_OUT_PACE`` scales the demo's waits (default 1; 0 for none).
"""

from __future__ import annotations

import os

import rxagent as ra
from rxagent.web.demo import AGENT_NAME, demo_agent


def agents() -> dict[str, ra.Agent]:
    """The agents by name; each worker process calls this once, at start."""
    from rxagent import __main__ as terminal_demo

    pace = float(os.environ.get("SCALE_OUT_PACE", "1"))
    terminal_demo._pace = pace  # the demo tools' waits
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        provider: ra.Provider = ra.OpenAIProvider(os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    else:
        from rxagent.testing import LoopbackServer

        server = LoopbackServer(terminal_demo.offline_model(pace), model="rxagent-demo").start()
        provider = server.provider(read_timeout=30.0)
    return {AGENT_NAME: demo_agent(provider)}
