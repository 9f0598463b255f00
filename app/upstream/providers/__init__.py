"""The upstream providers by the name a target's ``provider`` gives: one module each, holding the
provider (how a request is sent to it) beside its dialect (how its answers differ from OpenAI's)."""
from __future__ import annotations

from .base import Provider
from .gemini import GeminiProvider
from .openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {provider.name: provider for provider in (OpenAIProvider(), GeminiProvider())}
