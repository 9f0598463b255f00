"""A Messages request turned into the gateway's chat request: the body validated once, its blocks
mapped onto chat messages (tool results become tool messages, tool uses become tool calls,
carrier signatures give the calls back their vendor fields), its settings onto chat fields.

``parse_messages_request(body, limits)`` returns the chat request and the facts reservations need,
or raises InvalidRequest naming the field as Anthropic does (``messages.3.content.1.source.type``).
"""
from __future__ import annotations

from typing import Any

import orjson

from ...core.config import RequestLimits
from ...core.errors import InvalidRequest
from ..chat import RequestFacts
from ..validation import free_form_fault
from . import schema, signature

# Anthropic's effort levels, and a thinking budget, as the chat API's reasoning_effort.
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_BUDGET_LOW, _BUDGET_MEDIUM = 4096, 16384
# No Chat Completions target takes more stop sequences than this (OpenAI: 4, Gemini: 5).
MAX_STOP_SEQUENCES = 4


def parse_messages_request(body: bytes, limits: RequestLimits = RequestLimits()) -> tuple[dict[str, Any], RequestFacts]:
    """Validate a Messages body; return the chat request it asks for and its facts."""
    return to_chat(schema.validate(body), limits)


def parse_count_request(body: bytes, limits: RequestLimits = RequestLimits()) -> tuple[dict[str, Any], RequestFacts]:
    """Validate a count_tokens body (a Messages body without max_tokens) the same way."""
    request = schema.validate(body, schema.COUNT)
    request.setdefault("max_tokens", None)
    return to_chat(request, limits)


def to_chat(request: dict[str, Any], limits: RequestLimits) -> tuple[dict[str, Any], RequestFacts]:
    """The chat request a validated Messages request asks for."""
    if len(request["messages"]) > limits.messages:
        raise InvalidRequest(
            f"messages: too many messages, at most {limits.messages} are allowed.", param="messages",
            code="array_above_max_length",
        )
    builder = _Builder(limits)
    system = request.get("system")
    if system:
        text = system if type(system) is str else "\n\n".join(block["text"] for block in system)
        builder.chars += len(text)
        builder.out.append({"role": "system", "content": text})
    builder.messages(request["messages"])
    if builder.chars > limits.text_chars:
        # Anthropic's words, which Claude Code reads (it offers to compact the conversation).
        raise InvalidRequest(
            f"prompt is too long: {(builder.chars + 3) // 4} tokens > {limits.text_chars // 4} maximum",
            code="context_length_exceeded",
        )
    chat: dict[str, Any] = {"model": request["model"], "messages": builder.out}
    max_tokens = request.get("max_tokens")
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    if request.get("stream"):
        chat["stream"] = True
    for name in ("temperature", "top_p"):
        if request.get(name) is not None:
            chat[name] = request[name]
    stops = request.get("stop_sequences")
    if stops:
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(
                f"stop_sequences: at most {MAX_STOP_SEQUENCES} stop sequences are supported.", param="stop_sequences",
                code="array_above_max_length",
            )
        chat["stop"] = stops
    user = (request.get("metadata") or {}).get("user_id")
    if user:
        chat["user"] = user
    _tools(request, chat, limits)
    effort = _effort(request, max_tokens)
    if effort is not None:
        chat["reasoning_effort"] = effort
    output = (request.get("output_config") or {}).get("format") or request.get("output_format")
    if output is not None:
        param = "output_config.format.schema" if (request.get("output_config") or {}).get("format") else "output_format.schema"
        _free_form(output["schema"], param)
        chat["response_format"] = {
            "type": "json_schema", "json_schema": {"name": "output", "schema": output["schema"], "strict": True},
        }
    facts = RequestFacts(builder.first_image, builder.images, builder.image_bytes, builder.chars)
    return chat, facts


def _tools(request: dict, chat: dict, limits: RequestLimits) -> None:
    tools = request.get("tools")
    if not tools:
        return  # no tools: no tool_choice either (a Chat Completions target refuses one alone)
    if len(tools) > limits.tools:
        raise InvalidRequest(f"tools: too many tools, at most {limits.tools} are allowed.", param="tools",
                             code="array_above_max_length")
    out = []
    for i, tool in enumerate(tools):
        parameters = tool["input_schema"]
        _free_form(parameters, f"tools.{i}.custom.input_schema")
        if "$schema" in parameters:  # a meta-declaration some targets refuse; it says nothing of the shape
            parameters = {k: v for k, v in parameters.items() if k != "$schema"}
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = parameters
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    chat["tools"] = out
    choice = request.get("tool_choice")
    if choice is None:
        return
    kind = choice["type"]
    if kind == "tool":
        names = {tool["name"] for tool in tools}
        if choice["name"] not in names:
            raise InvalidRequest(
                f"tool_choice.tool.name: no tool named '{choice['name']}' is in 'tools'.", param="tool_choice.tool.name",
            )
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use"):
        chat["parallel_tool_calls"] = False


def _effort(request: dict, max_tokens: int | None) -> str | None:
    """``output_config.effort`` as the target's reasoning effort; else an enabled thinking budget,
    by its size; adaptive or disabled thinking leaves the target's default."""
    effort = (request.get("output_config") or {}).get("effort")
    thinking = request.get("thinking")
    if thinking is not None and thinking["type"] == "enabled":
        budget = thinking["budget_tokens"]
        if max_tokens is not None and budget >= max_tokens:
            raise InvalidRequest(
                f"thinking.enabled.budget_tokens: Input should be less than max_tokens ({max_tokens})",
                param="thinking.enabled.budget_tokens",
            )
        if effort is None:
            return "low" if budget < _BUDGET_LOW else "medium" if budget < _BUDGET_MEDIUM else "high"
    return _EFFORTS[effort] if effort is not None else None


class _Builder:
    """Chat messages built from Messages ones, with the facts learned on the way."""

    __slots__ = ("limits", "out", "chars", "images", "image_bytes", "first_image", "_pending", "_held", "_answered")

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.out: list[dict] = []
        self.chars = 0
        self.images = 0
        self.image_bytes = 0
        self.first_image: str | None = None
        # Tool uses of the last assistant message still owed a result, with where they were made;
        # system entries that came before those results, held until the results are placed.
        self._pending: dict[str, str] = {}
        self._held: list[dict] = []
        self._answered = 0

    def messages(self, messages: list[dict]) -> None:
        for i, message in enumerate(messages):
            role = message["role"]
            if role == "system":
                entry = {"role": "system", "content": self._plain_text(message["content"], i)}
                (self._held if self._pending else self.out).append(entry)
            elif role == "user":
                self._user(message["content"], i)
            else:
                self._owed(i)
                self._assistant(message["content"], i)
        self._owed(len(messages))

    def _owed(self, i: int) -> None:
        """Every tool use must be answered by the next (non-system) message."""
        if self._pending:
            ids = ", ".join(self._pending)
            at = next(iter(self._pending.values()))
            raise InvalidRequest(
                f"{at}: `tool_use` ids were found without `tool_result` blocks immediately after: {ids}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message.",
                param=at,
            )
        self.out.extend(self._held)
        self._held.clear()

    def _plain_text(self, content: str | list, i: int) -> str:
        if type(content) is str:
            self.chars += len(content)
            return content
        texts = []
        for j, block in enumerate(content):
            if block["type"] != "text":
                raise _not_allowed(block["type"], "system", f"messages.{i}.content.{j}.type")
            texts.append(block["text"])
        text = "\n\n".join(texts)
        self.chars += len(text)
        return text

    def _user(self, content: str | list, i: int) -> None:
        pending = self._pending
        if type(content) is str:
            self._owed(i)
            self.chars += len(content)
            self.out.append({"role": "user", "content": content})
            return
        parts: list[dict] = []
        for j, block in enumerate(content):
            kind = block["type"]
            at = f"messages.{i}.content.{j}"
            if kind == "tool_result":
                call_id = block["tool_use_id"]
                if pending.pop(call_id, None) is None:
                    raise InvalidRequest(
                        f"{at}.tool_use_id: unexpected `tool_use_id` found in `tool_result` blocks: {call_id}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous message.",
                        param=f"{at}.tool_use_id",
                    )
                self._tool_result(block, at, parts)
            elif kind == "text":
                self.chars += len(block["text"])
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image":
                parts.append(self._image(block, at))
            elif kind == "document":
                parts.extend(self._document(block, at))
            else:
                raise _not_allowed(kind, "user", f"{at}.type")
        self._owed(i)
        if parts:
            if all(part["type"] == "text" for part in parts) and len(parts) == 1:
                self.out.append({"role": "user", "content": parts[0]["text"]})
            else:
                self.out.append({"role": "user", "content": parts})
        elif not self._answered:
            self.out.append({"role": "user", "content": ""})
        self._answered = 0

    def _tool_result(self, block: dict, at: str, parts: list[dict]) -> None:
        """A tool message; images the tool returned go to the user message that follows the tool
        messages (a tool message holds text only)."""
        content = block.get("content")
        if content is None:
            text = ""
        elif type(content) is str:
            text = content
        else:
            texts = []
            for k, item in enumerate(content):
                if item["type"] == "text":
                    texts.append(item["text"])
                elif item["type"] == "image":
                    parts.append(self._image(item, f"{at}.content.{k}"))
                else:
                    texts.extend(part["text"] for part in self._document(item, f"{at}.content.{k}") if part["type"] == "text")
            text = "\n\n".join(texts)
        if block.get("is_error"):
            text = "Error: " + text
        self.chars += len(text)
        self.out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        self._answered += 1

    def _image(self, block: dict, at: str) -> dict:
        source = block["source"]
        kind = source["type"]
        if kind == "base64":
            url = f"data:{source['media_type']};base64,{source['data']}"
            if len(url) > self.limits.image_url_bytes:
                raise InvalidRequest(
                    f"{at}.source.data: the image is larger than {self.limits.image_url_bytes} bytes.",
                    param=f"{at}.source.data", code="image_too_large",
                )
            size = len(source["data"])
        elif kind == "url":
            url = source["url"]
            if not url[:8].lower().startswith(("https://", "http://")):
                raise InvalidRequest(f"{at}.source.url: expected an http(s) URL.", param=f"{at}.source.url")
            if len(url) > 8192:
                raise InvalidRequest(f"{at}.source.url: the URL is longer than 8192 characters.", param=f"{at}.source.url")
            size = len(url)
        else:
            raise InvalidRequest(
                f"{at}.source.type: image source '{kind}' is not supported: send the image as 'base64' or 'url'.",
                param=f"{at}.source.type",
            )
        if self.first_image is None:
            self.first_image = at
        self.images += 1
        self.image_bytes += size
        return {"type": "image_url", "image_url": {"url": url}}

    def _document(self, block: dict, at: str) -> list[dict]:
        """A document with a text source (plain text, or text and image blocks) becomes those parts,
        under its title; PDF, URL and file sources are refused: no target reads them here."""
        source = block["source"]
        kind = source["type"]
        head = "\n\n".join(x for x in (block.get("title"), block.get("context")) if x)
        if kind == "text":
            items = [{"type": "text", "text": source["data"]}]
        elif kind == "content":
            content = source["content"]
            items = [{"type": "text", "text": content}] if type(content) is str else content
        else:
            raise InvalidRequest(
                f"{at}.source.type: document source '{kind}' is not supported: send the document's text "
                "(source type 'text' or 'content').",
                param=f"{at}.source.type",
            )
        parts = [{"type": "text", "text": head}] if head else []
        for k, item in enumerate(items):
            if item["type"] == "text":
                parts.append({"type": "text", "text": item["text"]})
            else:
                parts.append(self._image(item, f"{at}.source.content.{k}"))
        self.chars += sum(len(part["text"]) for part in parts if part["type"] == "text")
        return parts

    def _assistant(self, content: str | list, i: int) -> None:
        if type(content) is str:
            self.chars += len(content)
            if content:
                self.out.append({"role": "assistant", "content": content})
            return
        texts: list[str] = []
        calls: list[dict] = []
        carried: dict[str, dict] = {}
        message_extra: dict | None = None
        thought: str | None = None
        for j, block in enumerate(content):
            kind = block["type"]
            at = f"messages.{i}.content.{j}"
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                _free_form(block["input"], f"{at}.tool_use.input")
                arguments = orjson.dumps(block["input"]).decode()
                self.chars += len(arguments)
                if block["id"] in self._pending:
                    raise InvalidRequest(f"{at}.id: `tool_use` ids must be unique: {block['id']}.", param=f"{at}.id")
                self._pending[block["id"]] = f"messages.{i}"
                calls.append({"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}})
            elif kind == "thinking":
                carrier = signature.decode(block["signature"])
                if carrier is not None:
                    self._vendor_size(block["signature"], f"{at}.signature")
                    carried.update(carrier["c"])
                    if carrier["m"]:
                        message_extra = {**(message_extra or {}), **carrier["m"]}
                    thought = carrier["t"] or thought
            elif kind != "redacted_thinking":
                raise _not_allowed(kind, "assistant", f"{at}.type")
        text = "\n\n".join(texts)
        self.chars += len(text)
        if not text and not calls:
            return  # only thinking: nothing a chat target takes back
        message: dict[str, Any] = {"role": "assistant"}
        if text:
            message["content"] = text
        if calls:
            for call in calls:
                extra = carried.get(call["id"])
                if extra:
                    call["extra_content"] = extra
            if not any("extra_content" in call for call in calls):
                calls[0]["extra_content"] = signature.DUMMY
            message["tool_calls"] = calls
        if message_extra:
            message["extra_content"] = message_extra
        if thought:
            message["thought_signature"] = thought
        self.out.append(message)

    def _vendor_size(self, value: str, param: str) -> None:
        limit = self.limits.vendor_field_bytes
        if len(value) > 2 * limit:
            raise InvalidRequest(f"{param}: larger than {2 * limit} bytes.", param=param, code="vendor_field_too_large")


def _not_allowed(kind: str, role: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: '{kind}' blocks are not allowed in {role} messages.", param=param)


def _free_form(value: Any, param: str) -> None:
    fault = free_form_fault(value, param, ".{}")
    if fault is not None:
        raise InvalidRequest(f"{fault[0]}: {fault[1]}", param=fault[0])
