"""The Messages answer built from a chat completion: the message object with its content blocks,
stop reason and usage, in the key order Anthropic writes them (tests/conformance/messages)."""
from __future__ import annotations

from typing import Callable

import orjson

from ..usage import Usage, estimate_tokens
from . import signature

_MESSAGE_HEAD = ("type", "message"), ("role", "assistant")


def message_id(request_id: str) -> str:
    return "msg_" + request_id


def tool_use_id(request_id: str, n: int) -> str:
    """Ours, never the upstream's: the next request sends it back as the call's id."""
    return f"toolu_{request_id}_{n}"


def stop_reason(finish_reason: object, tool_use: bool, refusal: bool) -> str:
    """Anthropic's stop reason for a chat finish reason. A matched stop sequence cannot be told from
    a natural end (Chat Completions says "stop" for both), so it reads as end_turn."""
    if finish_reason == "length":
        return "max_tokens"
    if tool_use or finish_reason in ("tool_calls", "function_call"):
        return "tool_use"
    if refusal or finish_reason == "content_filter":
        return "refusal"
    return "end_turn"


def token_counts(usage: Usage) -> tuple[int, int, int]:
    """(input, cache read, output) tokens as Anthropic counts them: input without the cached part;
    output everything billed beyond the prompt (Gemini's hidden thinking tokens included)."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    output = max(usage.completion_tokens, usage.total_tokens - usage.prompt_tokens)
    return usage.prompt_tokens - cached, cached, output


def usage_object(usage: Usage) -> dict:
    """The full usage object of a message (non-stream answers and message_start)."""
    fresh, cached, output = token_counts(usage)
    return {
        "input_tokens": fresh,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def message_from_completion(doc: dict, model: str, request_id: str,
                            estimate: Callable[[int], Usage]) -> tuple[bytes, Usage]:
    """The message object for a (dialect-normalised) chat completion, and the usage it shows: the
    upstream's, or the estimate billed when it reported none."""
    choices = doc.get("choices")
    choice = choices[0] if type(choices) is list and choices and type(choices[0]) is dict else {}
    message = choice.get("message") if type(choice.get("message")) is dict else {}
    content: list[dict] = []
    chars = 0
    reasoning = message.get("reasoning_content")
    text = message.get("content")
    refusal = message.get("refusal")
    carried: dict[str, dict] = {}
    uses: list[dict] = []
    for n, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if type(call) is dict else None
        if type(function) is not dict:
            continue
        arguments = function.get("arguments")
        chars += len(arguments) if type(arguments) is str else 0
        tool_id = tool_use_id(request_id, n)
        if type(call.get("extra_content")) is dict:
            carried[tool_id] = call["extra_content"]
        uses.append({"type": "tool_use", "id": tool_id, "name": str(function.get("name") or ""), "input": _input(arguments)})
    extra = message.get("extra_content") if type(message.get("extra_content")) is dict else None
    thought = message.get("thought_signature") if type(message.get("thought_signature")) is str else None
    carrier = signature.encode(carried, extra, thought) if carried or extra or thought else ""
    if type(reasoning) is str and reasoning or carrier:
        reasoning = reasoning if type(reasoning) is str else ""
        chars += len(reasoning)
        content.append({"type": "thinking", "thinking": reasoning, "signature": carrier})
    if type(text) is str and text:
        chars += len(text)
        content.append({"type": "text", "text": text})
    if type(refusal) is str and refusal:
        chars += len(refusal)
        content.append({"type": "text", "text": refusal})
    content.extend(uses)
    usage = Usage.from_upstream(doc.get("usage")) or estimate(estimate_tokens(chars))
    out = {
        "model": model,
        "id": message_id(request_id),
        **dict(_MESSAGE_HEAD),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), bool(uses), type(refusal) is str and bool(refusal)),
        "stop_sequence": None,
        "usage": usage_object(usage),
    }
    return orjson.dumps(out), usage


def _input(arguments: object) -> dict:
    """A tool call's arguments as the tool_use input object; a call cut short (or not JSON) is {}."""
    if type(arguments) is not str or not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if type(value) is dict else {}
