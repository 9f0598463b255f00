"""The carrier of a provider's per-call vendor fields (Gemini's thought signatures) across a tool loop:
they ride in a ``reasoning`` item's ``encrypted_content``, which clients send back untouched.

Gemini 3 refuses a function call sent back without the signature its answer gave it. Chat
Completions carries it as ``tool_calls[].extra_content``; the Responses API has no such field on a
``function_call`` item, so the answer gets a reasoning item (before its calls) whose
``encrypted_content`` holds ``{call_id: extra_content}``. A call that comes back with no carried
signature gets Google's documented placeholder, which tells Gemini to skip the check.
"""
from __future__ import annotations

import base64
import binascii

import orjson

PREFIX = "zsig1."
# https://ai.google.dev/gemini-api/docs/thought-signatures (FAQ): a history that was not made by
# Gemini, or lost its signatures, may carry this value instead.
PLACEHOLDER = {"google": {"thought_signature": "skip_thought_signature_validator"}}


def encode(fields: dict[str, dict]) -> str:
    """``encrypted_content`` for a reasoning item carrying ``{call_id: extra_content}``."""
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(fields)).decode()


def decode(content: object) -> dict[str, dict]:
    """The ``{call_id: extra_content}`` a reasoning item carries; empty when it is not ours
    (another service's encrypted reasoning cannot travel through Chat Completions)."""
    if type(content) is not str or not content.startswith(PREFIX):
        return {}
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(content[len(PREFIX):]))
    except (binascii.Error, ValueError):
        return {}
    if type(doc) is not dict:
        return {}
    return {k: v for k, v in doc.items() if type(k) is str and type(v) is dict}
