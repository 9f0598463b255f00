"""OpenAI's chat completions API: the reference wire format, nothing to adapt."""
from __future__ import annotations

from .provider import Provider


class OpenAIProvider(Provider):
    name = "openai"
