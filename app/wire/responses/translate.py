"""A validated Responses request turned into the chat request every target takes: input items into
chat messages (consecutive calls into one assistant message), tools into functions, options into
their chat names.

What does not travel: reasoning items other than ours (OpenAI's encrypted reasoning cannot be
replayed through Chat Completions; their summaries are not sent), ``metadata``, ``store`` and
``truncation`` (ours), ``include`` beyond logprobs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import orjson

from ...core.config import RequestLimits
from ...core.errors import InvalidRequest
from ..chat import RequestFacts, check_image_url, check_vendor_field
from . import signatures
from .request import HOSTED_ITEMS, HOSTED_TOOLS

# The ``reasoning_effort`` every target takes for each of the Responses API's efforts.
_EFFORTS = {"none": "none", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
            "xhigh": "high", "max": "high"}
_SEPARATOR = "__"
# Chat Completions targets take tool call ids of at most 40 characters.
_CALL_ID_MAX = 40
_HOSTED_ADVICE = (
    "remove it from 'tools' (Codex CLI: set web_search = \"disabled\" in its config.toml) "
    "or describe what you need as a function tool that your code runs."
)


class Tool(NamedTuple):
    """A tool as the caller named it: its kind (``function`` or ``custom``), name and namespace."""

    kind: str
    name: str
    namespace: str | None = None


@dataclass(slots=True)
class ChatRequest:
    """The chat request a Responses request becomes, and what the answer's translation needs of it."""

    body: dict[str, Any]
    facts: RequestFacts
    # The chat function name of every tool offered, and the tool it stands for.
    tools: dict[str, Tool] = field(default_factory=dict)


def chat_call_id(call_id: str) -> str:
    """The id a call travels under: the caller's own when a chat target takes it, else a digest."""
    if len(call_id) <= _CALL_ID_MAX:
        return call_id
    return "call_" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def to_chat(request: dict[str, Any], history: list[dict] = (), resolve: Callable[[str], dict | None] | None = None,
            limits: RequestLimits = RequestLimits()) -> ChatRequest:
    """The chat request for ``request``; ``history`` holds the items of the responses it follows
    (``previous_response_id``), oldest first; ``resolve`` finds the stored item an
    ``item_reference`` names. Raises InvalidRequest naming the field."""
    tools, chat_tools = _tools(request.get("tools") or (), limits)
    body: dict[str, Any] = {"model": request["model"]}
    converter = _Messages(limits)
    instructions = request.get("instructions")
    if instructions:
        converter.messages.append({"role": "system", "content": instructions})
    items = request.get("input")
    if type(items) is str:
        items = [{"role": "user", "content": items}]
    elif items is None:
        items = []
    if resolve is not None or any(_kind(item) == "item_reference" for item in items):
        items = [_resolved(item, i, resolve) for i, item in enumerate(items)]
    converter.convert(list(history), items)
    if not converter.has_turns:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    body["messages"] = converter.messages
    if request.get("stream"):
        body["stream"] = True
    _options(request, body, tools, chat_tools)
    return ChatRequest(body, converter.facts(), tools)


def _kind(item: dict) -> str:
    kind = item.get("type")
    if kind is None:
        return "message" if "role" in item else "item_reference"
    return kind


def _resolved(item: dict, i: int, resolve: Callable[[str], dict | None] | None) -> dict:
    if _kind(item) != "item_reference":
        return item
    found = resolve(item["id"]) if resolve is not None else None
    if found is None:
        raise InvalidRequest(f"Item with id '{item['id']}' not found.", param=f"input[{i}].id", code="item_not_found")
    return found


# tools


def _tools(tools: Any, limits: RequestLimits) -> tuple[dict[str, Tool], list[dict]]:
    mapping: dict[str, Tool] = {}
    chat: list[dict] = []
    for i, tool in enumerate(tools):
        kind = tool["type"]
        if kind in HOSTED_TOOLS:
            raise InvalidRequest(
                f"Invalid value for 'tools[{i}].type': '{kind}' is a hosted tool, which no model of this "
                f"gateway can run; {_HOSTED_ADVICE}",
                param=f"tools[{i}].type", code="unsupported_value",
            )
        if kind == "namespace":
            for j, inner in enumerate(tool["tools"]):
                name = tool["name"] + _SEPARATOR + inner["name"]
                if len(name) > 64:
                    raise InvalidRequest(
                        f"Invalid 'tools[{i}].tools[{j}].name': with its namespace the name is longer than "
                        f"{64 - len(_SEPARATOR)} characters.",
                        param=f"tools[{i}].tools[{j}].name",
                    )
                description = " ".join(d for d in (tool.get("description"), inner.get("description")) if d)
                chat.append(_function(inner, name, description or None))
                mapping[name] = Tool(inner.get("type", "function"), inner["name"], tool["name"])
        else:
            chat.append(_function(tool, tool["name"], tool.get("description")))
            mapping[tool["name"]] = Tool(kind, tool["name"])
    if len(chat) > limits.tools:
        raise InvalidRequest(f"Too many tools: at most {limits.tools} are allowed.", param="tools", code="array_above_max_length")
    return mapping, chat


def _function(tool: dict, name: str, description: str | None) -> dict:
    """A function or custom tool as a chat function; a custom tool takes its text as ``input``."""
    function: dict[str, Any] = {"name": name}
    if tool.get("type", "function") == "custom":
        text = "The raw text this tool takes, in the field 'input'."
        grammar = tool.get("format")
        if grammar and grammar["type"] == "grammar":
            text += f" It must match this {grammar['syntax']} grammar:\n{grammar['definition']}"
        function["description"] = f"{description}\n\n{text}" if description else text
        function["parameters"] = {
            "type": "object",
            "properties": {"input": {"type": "string"}},
            "required": ["input"],
            "additionalProperties": False,
        }
        return {"type": "function", "function": function}
    if description is not None:
        function["description"] = description
    if tool.get("parameters") is not None:
        function["parameters"] = tool["parameters"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


# options


def _options(request: dict, body: dict, tools: dict[str, Tool], chat_tools: list[dict]) -> None:
    choice = request.get("tool_choice")
    chosen: Any = None
    if type(choice) is str:
        chosen = choice
    elif type(choice) is dict:
        kind = choice["type"]
        if kind in HOSTED_TOOLS:
            raise InvalidRequest(
                f"Invalid value for 'tool_choice.type': '{kind}' is a hosted tool, which no model of this gateway "
                "can run.",
                param="tool_choice.type", code="unsupported_value",
            )
        if kind == "allowed_tools":
            allowed = {t.get("name") for t in choice["tools"]}
            chat_tools = [t for t in chat_tools if t["function"]["name"] in allowed or tools[t["function"]["name"]].name in allowed]
            chosen = choice["mode"]
        else:
            name = _chat_name(choice["name"], tools)
            if name is None:
                raise InvalidRequest(
                    f"Tool choice '{choice['name']}' not found in 'tools' parameter.", param="tool_choice.name"
                )
            chosen = {"type": "function", "function": {"name": name}}
    if chat_tools:
        body["tools"] = chat_tools
        if chosen is not None:
            body["tool_choice"] = chosen
        if request.get("parallel_tool_calls") is not None:
            body["parallel_tool_calls"] = request["parallel_tool_calls"]
    elif chosen not in (None, "auto", "none"):
        raise InvalidRequest("Tool choice 'required' must be specified with 'tools'.", param="tool_choice")
    for name in ("temperature", "top_p", "user", "safety_identifier", "prompt_cache_key", "service_tier"):
        value = request.get(name)
        if value is not None:
            body[name] = value
    if request.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = request["max_output_tokens"]
    reasoning = request.get("reasoning") or {}
    if reasoning.get("effort") is not None:
        body["reasoning_effort"] = _EFFORTS[reasoning["effort"]]
    text = request.get("text") or {}
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]
    text_format = text.get("format")
    if text_format and text_format["type"] != "text":
        if text_format["type"] == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            schema = {k: text_format[k] for k in ("name", "description", "schema", "strict") if text_format.get(k) is not None}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if "message.output_text.logprobs" in (request.get("include") or ()):
        body["logprobs"] = True
        if request.get("top_logprobs"):
            body["top_logprobs"] = request["top_logprobs"]


def _chat_name(name: str, tools: dict[str, Tool]) -> str | None:
    if name in tools:
        return name
    return next((chat for chat, tool in tools.items() if tool.name == name), None)


# input items


class _Messages:
    """Input items to chat messages, one item at a time."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.messages: list[dict] = []
        self.has_turns = False
        self._assistant: dict | None = None
        self._images: list[dict] = []  # images tool outputs returned, sent after the tool messages
        self._open_calls: dict[str, str] = {}  # call_id -> the param of the call waiting for its output
        self._answered: set[str] = set()
        self._signatures: dict[str, dict] = {}
        self.chars = 0
        self.images = 0
        self.image_bytes = 0
        self.first_image: str | None = None

    def facts(self) -> RequestFacts:
        return RequestFacts(self.first_image, self.images, self.image_bytes, self.chars)

    def convert(self, history: list[dict], items: list[dict]) -> None:
        for source, where in ((history, "previous_response_id"), (items, None)):
            for i, item in enumerate(source):
                if _kind(item) == "reasoning":
                    self._carry(item, where or f"input[{i}]")
        for i, item in enumerate(history):
            self._item(item, "previous_response_id")
        for i, item in enumerate(items):
            self._item(item, f"input[{i}]")
        self._flush()
        if self._open_calls:
            call_id, param = next(iter(self._open_calls.items()))
            raise InvalidRequest(f"No tool output found for function call {call_id}.", param=param)
        if self.chars > self.limits.text_chars:
            raise InvalidRequest(
                f"The input holds too much text: at most {self.limits.text_chars} characters are allowed.",
                param="input", code="context_length_exceeded",
            )

    def _carry(self, item: dict, param: str) -> None:
        carried = signatures.decode(item.get("encrypted_content"))
        if carried:
            check_vendor_field(carried, f"{param}.encrypted_content", self.limits)
            self._signatures.update(carried)

    def _item(self, item: dict, param: str) -> None:
        kind = _kind(item)
        if kind == "message":
            if item["role"] == "assistant":
                self._assistant_text(item, param)
            else:
                self._flush()
                self._message(item, param)
        elif kind in ("function_call", "custom_tool_call"):
            self._call(item, kind, param)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, param)
        elif kind == "reasoning":
            pass  # carried above; its summary and OpenAI's encrypted reasoning do not travel
        elif kind in HOSTED_ITEMS:
            raise InvalidRequest(
                f"Invalid value for '{param}.type': '{kind}' items belong to hosted tools, which no model of "
                "this gateway runs; leave them out of 'input'.",
                param=f"{param}.type", code="unsupported_value",
            )
        else:  # an item_reference that resolved to something no item is
            raise InvalidRequest(f"Invalid value for '{param}.type'.", param=f"{param}.type")

    def _message(self, item: dict, param: str) -> None:
        role = item["role"]
        content = item["content"]
        self.has_turns = True
        if type(content) is str:
            self.chars += len(content)
            self.messages.append({"role": "user" if role == "user" else "system", "content": content})
            return
        parts: list[dict] = []
        for j, part in enumerate(content):
            kind = part["type"]
            where = f"{param}.content[{j}]"
            if kind == "input_text":
                self.chars += len(part["text"])
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "input_image" and role == "user":
                parts.append(self._image(part, where))
            else:
                self._refuse_part(kind, role, where)
        if role == "user":
            self.messages.append({"role": "user", "content": parts if parts else ""})
        else:
            text = parts[0]["text"] if len(parts) == 1 else "\n\n".join(p["text"] for p in parts)
            self.messages.append({"role": "system", "content": text})

    def _refuse_part(self, kind: str, role: str, where: str) -> None:
        if kind == "input_file":
            raise InvalidRequest(
                f"Invalid value for '{where}.type': file inputs are not supported; send the file's text as "
                "'input_text'.",
                param=f"{where}.type", code="unsupported_value",
            )
        raise InvalidRequest(
            f"Invalid value for '{where}.type': '{kind}' parts are not allowed in {role} messages.",
            param=f"{where}.type",
        )

    def _image(self, part: dict, where: str) -> dict:
        if part.get("file_id") is not None or part.get("image_url") is None:
            raise InvalidRequest(
                f"Invalid '{where}': images by 'file_id' are not supported; send 'image_url' (an https URL or "
                "a base64 data URL).",
                param=f"{where}.file_id" if part.get("file_id") is not None else f"{where}.image_url",
                code="unsupported_value",
            )
        url = part["image_url"]
        check_image_url(url, f"{where}.image_url", self.limits)
        if self.first_image is None:
            self.first_image = f"{where}.type"
        self.images += 1
        self.image_bytes += len(url)
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail in ("low", "high"):
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}

    def _assistant_text(self, item: dict, param: str) -> None:
        content = item["content"]
        texts: list[str] = []
        refusals: list[str] = []
        if type(content) is str:
            texts.append(content)
        else:
            for j, part in enumerate(content):
                kind = part["type"]
                if kind in ("output_text", "input_text"):
                    texts.append(part["text"])
                elif kind == "refusal":
                    refusals.append(part["refusal"])
                else:
                    self._refuse_part(kind, "assistant", f"{param}.content[{j}]")
        text = "".join(texts)
        self.chars += len(text)
        self.has_turns = True
        current = self._assistant
        if current is not None and current.get("tool_calls"):
            # Text between calls and their outputs: the same chat turn.
            if text:
                current["content"] = (current.get("content") or "") + text
        else:
            self._flush()
            current = self._assistant = {"role": "assistant", "content": text if text or not refusals else None}
        if refusals:
            current["refusal"] = (current.get("refusal") or "") + "".join(refusals)

    def _call(self, item: dict, kind: str, param: str) -> None:
        if self._assistant is None:
            self._flush()
            self._assistant = {"role": "assistant", "content": None}
        calls = self._assistant.setdefault("tool_calls", [])
        call_id = item["call_id"]
        name = item["name"] if item.get("namespace") is None else item["namespace"] + _SEPARATOR + item["name"]
        if kind == "custom_tool_call":
            arguments = orjson.dumps({"input": item["input"]}).decode()
        else:
            arguments = item["arguments"]
        self.chars += len(arguments)
        self.has_turns = True
        calls.append({
            "id": chat_call_id(call_id),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
            "extra_content": self._signatures.get(call_id) or signatures.PLACEHOLDER,
        })
        self._open_calls[call_id] = param

    def _output(self, item: dict, param: str) -> None:
        call_id = item["call_id"]
        if call_id not in self._open_calls:
            raise InvalidRequest(
                f"No tool call found for function call output with call_id {call_id}.", param=f"{param}.call_id"
            )
        del self._open_calls[call_id]
        if self._assistant is not None:
            self.messages.append(self._assistant)
            self._assistant = None
        output = item["output"]
        if type(output) is str:
            text = output
        else:
            texts = []
            for j, part in enumerate(output):
                where = f"{param}.output[{j}]"
                if part["type"] == "input_text":
                    texts.append(part["text"])
                elif part["type"] == "input_image":
                    self._images.append(self._image(part, where))
                else:
                    self._refuse_part(part["type"], "tool output", where)
            text = "\n".join(texts)
        self.chars += len(text)
        self.messages.append({"role": "tool", "tool_call_id": chat_call_id(call_id), "content": text})

    def _flush(self) -> None:
        """Close the assistant turn in progress, and send the images tool outputs returned."""
        if self._assistant is not None:
            self.messages.append(self._assistant)
            self._assistant = None
        if self._images and not self._open_calls:
            self.messages.append({
                "role": "user",
                "content": [{"type": "text", "text": "The images the tool calls above returned:"}, *self._images],
            })
            self._images = []
