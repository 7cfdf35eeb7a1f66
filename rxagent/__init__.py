"""rxagent: streaming LLM agents as RxPY (reactivex) operator pipelines."""

from typing import TYPE_CHECKING

from rxagent import approval, events, live, ops, policies, state, viz
from rxagent.agent import DEFAULT_POLICY, Agent, Run, collect_final
from rxagent.aio import from_async_iterable, to_async_iterable
from rxagent.errors import (
    AgentError,
    ApprovalError,
    OutputValidationError,
    ProviderError,
    ToolArgumentsError,
    ToolCancelled,
    ToolError,
    ToolExecutionError,
    ToolOutputError,
    ToolsFailed,
    ToolTimeoutError,
    UnknownToolError,
)
from rxagent.events import AgentEvent, AgentRun
from rxagent.live import display
from rxagent.messages import (
    AssistantMessage,
    Conversation,
    Message,
    SystemMessage,
    ToolCall,
    ToolCallStatus,
    ToolMessage,
    Usage,
    UserMessage,
)
from rxagent.policies import LoopState, Policy, StepOutcome, StopReason
from rxagent.providers import Provider, ProviderRequest, ScriptedProvider, scripted
from rxagent.state import RunState, RunStatus, StepPhase
from rxagent.subagents import handoff
from rxagent.tools import JoinPolicy, Tool, Toolset, tool
from rxagent.validation import (
    ValidationPolicy,
    Violation,
    ViolationCode,
    validate_conversation,
)

if TYPE_CHECKING:
    from rxagent.providers.openai import OpenAIProvider, RetryPolicy
    from rxagent.providers.responses import OpenAIResponsesProvider

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The openai SDK takes half a second to import: load it when first asked for.
    if name in ("OpenAIProvider", "RetryPolicy"):
        from rxagent.providers import openai

        return getattr(openai, name)
    if name == "OpenAIResponsesProvider":
        from rxagent.providers.responses import OpenAIResponsesProvider

        return OpenAIResponsesProvider
    raise AttributeError(f"module 'rxagent' has no attribute {name!r}")


__all__ = [
    "DEFAULT_POLICY",
    "Agent",
    "AgentError",
    "AgentEvent",
    "AgentRun",
    "ApprovalError",
    "AssistantMessage",
    "Conversation",
    "JoinPolicy",
    "LoopState",
    "Message",
    "OpenAIProvider",
    "OpenAIResponsesProvider",
    "OutputValidationError",
    "Policy",
    "Provider",
    "ProviderError",
    "ProviderRequest",
    "RetryPolicy",
    "Run",
    "RunState",
    "RunStatus",
    "ScriptedProvider",
    "StepPhase",
    "StepOutcome",
    "StopReason",
    "SystemMessage",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCallStatus",
    "ToolCancelled",
    "ToolError",
    "ToolExecutionError",
    "ToolMessage",
    "ToolOutputError",
    "ToolTimeoutError",
    "ToolsFailed",
    "Toolset",
    "UnknownToolError",
    "Usage",
    "UserMessage",
    "ValidationPolicy",
    "Violation",
    "ViolationCode",
    "approval",
    "collect_final",
    "display",
    "events",
    "from_async_iterable",
    "handoff",
    "live",
    "ops",
    "policies",
    "scripted",
    "state",
    "to_async_iterable",
    "tool",
    "validate_conversation",
    "viz",
]
