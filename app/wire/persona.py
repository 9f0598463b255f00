"""The Zowy persona: the guard message put first in every upstream request, and the scrubbing of
upstream names and hosts out of any text meant for a caller."""
from __future__ import annotations

import re
from typing import Iterable

_FAMILIES = re.compile(
    r"\b(?:models/)?(?:gpt-[\w.\-]+|gemini-[\w.\-]+|o[1345](?:-[\w.\-]+)?|claude-[\w.\-]+|chatgpt-[\w.\-]+)",
    re.IGNORECASE,
)
_URLS = re.compile(r"https?://[^\s\"'<>]+", re.IGNORECASE)
_HOSTS = re.compile(r"\b[\w-]+(?:\.[\w-]+)*\.(?:googleapis|openai|google)\.com\b", re.IGNORECASE)


def guard_message(prompt: str) -> dict:
    """The system message that makes the model answer as Zowy AI."""
    return {"role": "system", "content": prompt}


def scrub(text: str, names: Iterable[str] = ()) -> str:
    """Remove upstream model names, hosts and URLs from a message meant for a caller."""
    for name in names:
        if name:
            text = text.replace(name, "the model")
    text = _URLS.sub("[redacted]", text)
    text = _HOSTS.sub("[redacted]", text)
    return _FAMILIES.sub("the model", text)
