"""Vendor fields of a chat answer carried through a client's history in a thinking block's
``signature``: Gemini's thought signatures, which the next request must send back with the tool
calls they came with (Gemini 3 refuses the calls otherwise).

A carrier signature is ``zs1.`` and the base64url (unpadded) of a compact JSON object:
``{"c": {tool_use_id: extra_content}, "m": message extra_content, "t": message thought_signature}``,
each key present only when it has something. Anything else in a signature (a real Anthropic one, a
client's own) carries nothing for us and is ignored.
"""
from __future__ import annotations

import base64
import binascii

import orjson

PREFIX = "zs1."
# Gemini's documented value for a function call whose signature was lost (history built elsewhere,
# or by a client that drops thinking blocks): it tells Gemini 3 to skip the signature check.
# https://ai.google.dev/gemini-api/docs/thought-signatures
DUMMY = {"google": {"thought_signature": "skip_thought_signature_validator"}}


def encode(calls: dict[str, dict] | None, message: dict | None = None, thought: str | None = None) -> str:
    """The signature that carries these vendor fields."""
    payload: dict = {}
    if calls:
        payload["c"] = calls
    if message:
        payload["m"] = message
    if thought:
        payload["t"] = thought
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def decode(signature: str) -> dict | None:
    """What a carrier signature holds, or None when it is not one of ours (or is damaged)."""
    if not signature.startswith(PREFIX):
        return None
    data = signature[len(PREFIX):]
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        return None
    if type(payload) is not dict:
        return None
    calls = payload.get("c")
    message = payload.get("m")
    thought = payload.get("t")
    return {
        "c": {k: v for k, v in calls.items() if type(v) is dict} if type(calls) is dict else {},
        "m": message if type(message) is dict else None,
        "t": thought if type(thought) is str else None,
    }
