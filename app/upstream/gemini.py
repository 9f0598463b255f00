"""Google's OpenAI-compatible endpoint for Gemini.

Its differences from OpenAI: error bodies that are a JSON list (read here), ``models/``-prefixed
model ids and usage riding on the last content chunk (both undone by the stream rewriter), and
parameters it refuses (declared per target in the models file).
"""
from __future__ import annotations

from .provider import Provider


class GeminiProvider(Provider):
    name = "gemini"

    def body(self, request: dict, target, guard: dict, stream: bool) -> bytes:
        options = request.get("stream_options")
        if options and options.get("include_obfuscation") is not None:
            request = {**request, "stream_options": {"include_usage": options.get("include_usage")}}
        return super().body(request, target, guard, stream)
