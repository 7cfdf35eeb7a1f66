"""Model providers: the protocol, and the built-in providers."""

from rxagent.providers import scripted
from rxagent.providers.base import (
    Finish,
    Provider,
    ProviderChunk,
    ProviderRequest,
    ToolCallReady,
)
from rxagent.providers.scripted import ScriptedProvider

__all__ = [
    "Finish",
    "Provider",
    "ProviderChunk",
    "ProviderRequest",
    "ScriptedProvider",
    "ToolCallReady",
    "scripted",
]
