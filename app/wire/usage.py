"""Usage as upstreams report it, and token estimates where they report none."""
from __future__ import annotations

from typing import NamedTuple


class Usage(NamedTuple):
    """Tokens of one answer (a named tuple: made on every request, it costs a third of a frozen
    dataclass to make)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_upstream(cls, raw: object) -> "Usage | None":
        """Read an OpenAI ``usage`` object; None when it is missing or malformed.

        ``total_tokens`` is billed as reported: Gemini counts thinking tokens in it, beyond
        prompt + completion. A total below their sum is taken as their sum.
        """
        if not isinstance(raw, dict):
            return None
        prompt = raw.get("prompt_tokens")
        completion = raw.get("completion_tokens")
        if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
            return None
        total = raw.get("total_tokens")
        if type(total) is not int or total < prompt + completion:
            total = prompt + completion
        return cls(
            prompt, completion, total,
            reasoning_tokens=_detail(raw, "completion_tokens_details", "reasoning_tokens"),
            cached_tokens=_detail(raw, "prompt_tokens_details", "cached_tokens"),
        )


def _detail(raw: dict, group: str, name: str) -> int:
    details = raw.get(group)
    value = details.get(name) if type(details) is dict else None
    return value if type(value) is int and value > 0 else 0


def estimate_tokens(n_chars: int) -> int:
    """Rough token count of text: ~4 characters a token, at least one for anything non-empty,
    never more than the characters themselves."""
    return (n_chars + 3) // 4


def estimate_usage(prompt_bytes: int, completion_tokens: int) -> Usage:
    """Usage when the upstream never reported it: the prompt from its size, the completion as counted."""
    prompt = estimate_tokens(prompt_bytes)
    return Usage(prompt, completion_tokens, prompt + completion_tokens, estimated=True)
