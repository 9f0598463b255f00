"""The response object: what it echoes of its request, its output items made from a chat answer, its
usage, and the ids the gateway gives it and its items.

Ids are ours: ``resp_<request id>``, and each item ``<prefix>_<request id><index as 4 hex>``, so an
item id names the response that holds it. Keys go in the order OpenAI writes them (recordings in
tests/conformance/responses/recordings).
"""
from __future__ import annotations

import time
from typing import Any

import orjson

from ..usage import Usage
from . import signatures
from .translate import Tool

_PREFIXES = {"message": "msg", "function_call": "fc", "custom_tool_call": "ctc", "reasoning": "rs"}
RESPONSE_PREFIX = "resp_"


def response_id(request_id: str) -> str:
    return RESPONSE_PREFIX + request_id


class Ids:
    """The ids of one response and of its items, numbered in output order."""

    __slots__ = ("request_id", "response")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.response = response_id(request_id)

    def item(self, kind: str, n: int) -> str:
        return f"{_PREFIXES[kind]}_{self.request_id}{n:04x}"

    def call(self, n: int) -> str:
        """The ``call_id`` of the response's ``n``-th call."""
        return f"call_{self.request_id}{n:04x}"


def usage_object(usage: Usage | None) -> dict | None:
    """A chat usage as the Responses API reports it: what a provider counts beyond prompt and
    completion (Gemini's thinking) is output, and reasoning, so that total = input + output."""
    if usage is None:
        return None
    output = usage.total_tokens - usage.prompt_tokens
    hidden = output - usage.completion_tokens
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens + hidden},
        "total_tokens": usage.total_tokens,
    }


class Frame:
    """What a response object echoes of its request, fixed when the response is created."""

    __slots__ = ("ids", "created_at", "_head", "_tail", "_service_tier")

    def __init__(self, request: dict[str, Any], public_model: str, request_id: str, created_at: int | None = None) -> None:
        self.ids = Ids(request_id)
        self.created_at = created_at or int(time.time())
        reasoning = request.get("reasoning") or {}
        text = request.get("text") or {}
        self._service_tier = request.get("service_tier")
        self._head = {
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "max_tool_calls": request.get("max_tool_calls"),
            "model": public_model,
        }
        self._tail = {
            "parallel_tool_calls": _default(request.get("parallel_tool_calls"), True),
            "previous_response_id": request.get("previous_response_id"),
            "prompt_cache_key": request.get("prompt_cache_key"),
            "prompt_cache_retention": request.get("prompt_cache_retention"),
            "reasoning": {
                "effort": reasoning.get("effort"),
                "summary": reasoning.get("summary") or reasoning.get("generate_summary"),
            },
            "safety_identifier": request.get("safety_identifier"),
            "service_tier": self._service_tier or "auto",
            "store": _default(request.get("store"), True),
            "temperature": _default(request.get("temperature"), 1.0),
            "text": {"format": _format(text.get("format")), "verbosity": text.get("verbosity") or "medium"},
            "tool_choice": _default(request.get("tool_choice"), "auto"),
            "tools": [_tool(t) for t in request.get("tools") or ()],
            "top_logprobs": _default(request.get("top_logprobs"), 0),
            "top_p": _default(request.get("top_p"), 1.0),
            "truncation": request.get("truncation") or "disabled",
        }
        self._tail["usage"] = None
        self._tail["user"] = request.get("user")
        self._tail["metadata"] = request.get("metadata") or {}

    @property
    def id(self) -> str:
        return self.ids.response

    @property
    def store(self) -> bool:
        return self._tail["store"]

    def response(self, status: str, output: list[dict], usage: dict | None = None, error: dict | None = None,
                 incomplete: str | None = None) -> dict[str, Any]:
        """The response object in ``status``, with its output and usage."""
        doc: dict[str, Any] = {
            "id": self.ids.response,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            **self._head,
            "output": output,
            **self._tail,
        }
        if status != "in_progress":
            # As OpenAI reports it once served: the tier asked for, or "default".
            doc["service_tier"] = self._service_tier if self._service_tier not in (None, "auto") else "default"
        doc["usage"] = usage
        return doc

    def encoded(self, status: str = "in_progress") -> bytes:
        return orjson.dumps(self.response(status, []))


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _format(text_format: dict | None) -> dict:
    if not text_format or text_format["type"] != "json_schema":
        return text_format or {"type": "text"}
    return {
        "type": "json_schema",
        "description": text_format.get("description"),
        "name": text_format["name"],
        "schema": text_format["schema"],
        "strict": text_format.get("strict"),
    }


def _tool(tool: dict) -> dict:
    if tool["type"] == "function":
        echo = {"type": "function", "description": tool.get("description"), "name": tool["name"]}
        if tool.get("output_schema") is not None:
            echo["output_schema"] = tool["output_schema"]
        echo["parameters"] = tool.get("parameters")
        echo["strict"] = tool.get("strict")
        return echo
    return tool


# items


def message_item(item_id: str, text: str | None, refusal: str | None, status: str = "completed",
                 logprobs: list | None = None) -> dict:
    content: list[dict] = []
    if text is not None:
        content.append({"type": "output_text", "annotations": [], "logprobs": logprobs or [], "text": text})
    if refusal is not None:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "status": status, "content": content, "role": "assistant"}


def call_item(item_id: str, call_id: str, tool: Tool, arguments: str, status: str = "completed") -> dict:
    """A ``function_call`` item, or a ``custom_tool_call`` one for a custom tool."""
    if tool.kind == "custom":
        item = {"id": item_id, "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": tool.name, "input": custom_input(arguments)}
    else:
        item = {"id": item_id, "type": "function_call", "status": status, "arguments": arguments,
                "call_id": call_id, "name": tool.name}
    if tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's text from the ``{"input": ...}`` its chat function was called with."""
    try:
        doc = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if type(doc) is dict and type(doc.get("input")) is str:
        return doc["input"]
    return arguments


def reasoning_item(item_id: str, carried: dict[str, dict]) -> dict:
    """The item that carries the calls' vendor fields (see ``signatures``)."""
    return {"id": item_id, "type": "reasoning", "summary": [], "encrypted_content": signatures.encode(carried)}


def tool_of(name: str, tools: dict[str, Tool]) -> Tool:
    """The tool a chat function name stands for (a name the caller never offered stays a function)."""
    return tools.get(name) or Tool("function", name)


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def completion_output(doc: dict, ids: Ids, tools: dict[str, Tool]) -> tuple[list[dict], str | None]:
    """The output items of a (rewritten) chat completion, and why it is incomplete, if it is."""
    choices = doc.get("choices")
    choice = choices[0] if type(choices) is list and choices and type(choices[0]) is dict else {}
    message = choice.get("message") if type(choice.get("message")) is dict else {}
    incomplete = INCOMPLETE.get(choice.get("finish_reason"))
    status = "incomplete" if incomplete else "completed"
    output: list[dict] = []
    calls = [c for c in message.get("tool_calls") or () if type(c) is dict and type(c.get("function")) is dict]
    carried = {ids.call(n): call["extra_content"] for n, call in enumerate(calls) if type(call.get("extra_content")) is dict}
    if carried:
        output.append(reasoning_item(ids.item("reasoning", 0), carried))
    text, refusal = message.get("content"), message.get("refusal")
    if type(text) is not str:
        text = None
    if type(refusal) is not str:
        refusal = None
    if text is not None and (text or not calls) or refusal is not None:
        logprobs = choice.get("logprobs")
        content_logprobs = logprobs.get("content") if type(logprobs) is dict else None
        output.append(message_item(ids.item("message", len(output)), text, refusal, status,
                                   content_logprobs if type(content_logprobs) is list else None))
    for k, call in enumerate(calls):
        function = call["function"]
        arguments = function.get("arguments") if type(function.get("arguments")) is str else ""
        tool = tool_of(function.get("name") or "", tools)
        kind = "custom_tool_call" if tool.kind == "custom" else "function_call"
        output.append(call_item(ids.item(kind, len(output)), ids.call(k), tool, arguments, status))
    return output, incomplete
