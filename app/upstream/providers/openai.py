"""OpenAI's chat completions API: the reference wire format, nothing to adapt."""
from __future__ import annotations

from .base import Provider


class OpenAIProvider(Provider):
    name = "openai"
