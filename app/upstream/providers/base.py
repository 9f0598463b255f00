"""What every provider adapter does: turn a validated request into the upstream body, read the
upstream's error bodies, and name the ``Dialect`` its answers speak. Provider modules override only
where their wire format differs from OpenAI's."""
from __future__ import annotations

from functools import cached_property
from typing import Any

import orjson

from ...catalog.models import Target
from ...core.errors import InvalidRequest
from ...wire.rewrite import OPENAI, Dialect

# The value a parameter has when the caller leaves it out; sending it is the same as not sending it.
DEFAULTS: dict[str, Any] = {
    "temperature": 1,
    "top_p": 1,
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "top_logprobs": 0,
    "parallel_tool_calls": True,
    "store": False,
}

# Fields previous responses carry that callers echo back inside messages; only real values travel.
_ECHOED_MESSAGE_FIELDS = ("annotations", "audio", "function_call", "refusal")


class Provider:
    name = "openai"
    dialect: Dialect = OPENAI
    # Vendor fields of other providers' answers that this provider does not take back.
    foreign_fields: tuple[str, ...] = ("extra_content", "thought_signature")

    def body(self, request: dict, target: Target, guard: dict, stream: bool) -> bytes:
        """The upstream request body for ``target``, built once, with the guard message first."""
        body = {k: v for k, v in request.items() if v is not None}
        body["model"] = target.model
        body["messages"] = [guard, *self.messages(request["messages"])]
        self.max_tokens(body, target.max_tokens_field)
        if stream:
            options = {"include_usage": True}
            extra = body.get("stream_options")
            if extra and extra.get("include_obfuscation") is not None:
                options["include_obfuscation"] = extra["include_obfuscation"]
            body["stream_options"] = options
            body["stream"] = True
        else:
            body.pop("stream_options", None)
            body.pop("stream", None)
        params = target.params
        if params:
            for param in body.keys() & params.keys():
                action = params[param].for_request(request)
                if action != "pass":
                    self.apply_policy(body, param, action)
        return orjson.dumps(body)

    def messages(self, messages: list[dict]) -> list[dict]:
        """The caller's messages as this provider takes them back: echoed empty fields, the SDKs'
        own fields and other providers' vendor fields left out. Untouched messages are not copied."""
        out = messages
        foreign = self.foreign_fields
        watched = self._watched
        for i, message in enumerate(messages):
            present = message.keys() & watched
            if not present:
                continue
            calls = message.get("tool_calls")
            if (
                "parsed" in present
                or any(k in present for k in foreign)
                or any(not message[k] for k in present if k in _ECHOED_MESSAGE_FIELDS)
                or (calls and any(_call_needs_cleaning(call, foreign) for call in calls))
            ):
                if out is messages:
                    out = list(messages)
                out[i] = _cleaned(message, foreign)
        return out

    @cached_property
    def _watched(self) -> frozenset[str]:
        """Message fields that may need leaving out: echoed ones, the SDKs', vendor fields."""
        return frozenset(("parsed", "tool_calls", *_ECHOED_MESSAGE_FIELDS, *self.foreign_fields))

    @staticmethod
    def max_tokens(body: dict, field: str) -> None:
        other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
        if other in body:
            value = body.pop(other)
            body.setdefault(field, value)

    @staticmethod
    def apply_policy(body: dict, param: str, action: str) -> None:
        value = body.pop(param)
        if action != "reject":
            return
        if param not in DEFAULTS:
            raise InvalidRequest(
                f"Unsupported parameter: '{param}' is not supported with this model.",
                param=param,
                code="unsupported_parameter",
            )
        if value != DEFAULTS[param]:
            raise InvalidRequest(
                f"Unsupported value: '{param}' is not supported with this model. "
                f"Leave it out or use the default ({DEFAULTS[param]}).",
                param=param,
                code="unsupported_parameter",
            )

    def error_status(self, status: int, raw: bytes) -> int:
        """The status an upstream error really means (some providers answer a bad key with 400)."""
        return status

    def error_reason(self, raw: bytes) -> str | None:
        """The human-readable reason inside an upstream error body, if there is one."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return _reason(doc)


def _call_needs_cleaning(call: dict, foreign: tuple[str, ...]) -> bool:
    return "index" in call or "parsed_arguments" in call["function"] or any(k in call for k in foreign)


def _cleaned(message: dict, foreign: tuple[str, ...]) -> dict:
    clean = {
        k: v for k, v in message.items()
        if k != "parsed" and k not in foreign and (v or k not in _ECHOED_MESSAGE_FIELDS)
    }
    if clean.get("tool_calls"):
        clean["tool_calls"] = [
            {
                **{k: v for k, v in call.items() if k != "index" and k not in foreign},
                "function": {k: v for k, v in call["function"].items() if k != "parsed_arguments"},
            }
            for call in clean["tool_calls"]
        ]
    return clean


def _reason(doc: Any) -> str | None:
    if isinstance(doc, list) and doc:
        return _reason(doc[0])
    if isinstance(doc, dict):
        error = doc.get("error", doc)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return None
