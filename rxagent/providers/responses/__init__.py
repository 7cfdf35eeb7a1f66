"""OpenAIResponsesProvider: OpenAI's Responses API, streamed.

The request is the SDK's (auth, configuration, status errors), the stream is
read by the same wire as :mod:`rxagent.providers.openai` (its deadlines,
retries and errors included), and its events are assembled into rxagent's
chunks here: ``response.output_text.delta`` is text,
``response.reasoning_summary_text.delta`` reasoning,
``response.function_call_arguments.delta`` a call's arguments (the call is
ready at its ``response.output_item.done``), ``response.completed`` the usage
and the end, an ``error`` event or ``response.failed`` a ``StreamError``.
"""

from rxagent.providers.responses._provider import OpenAIResponsesProvider, to_input

__all__ = ["OpenAIResponsesProvider", "to_input"]
