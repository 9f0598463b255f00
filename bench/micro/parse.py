"""Parse + validate a chat request of ~1 KB, ~20 KB (long history) and ~1 MB (image data URL):

* ``parse_chat_request``: what the gateway runs (pydantic-core ``validate_json`` + role checks);
* ``validate_json``: the gateway's ``SchemaValidator`` on the bytes, Rust parse and validate in one pass;
* ``orjson.loads + validate_python``: parse with orjson, then the same validator on the dict;
* ``json.loads + pydantic model``: the stdlib parser and a pydantic ``BaseModel`` mirroring the schema;
* ``pydantic model_validate_json``: the same model fed the bytes.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Annotated, Any, Literal, Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import SchemaValidator

from app.wire import chat

from .timing import measure

# ---------------------------------------------------------------- payloads


def payloads() -> dict[str, bytes]:
    system = {"role": "system", "content": "You are a concise assistant for a travel company. " * 3}
    short = {
        "model": "zowy-1",
        "messages": [system, {"role": "user", "content": "What should I see in Samarkand in two days? " * 8}],
        "temperature": 0.7, "max_tokens": 512, "stream": True, "stream_options": {"include_usage": True},
        "user": "user-1234",
    }
    history = [system]
    for i in range(18):
        history.append({"role": "user", "content": f"Question {i}: " + "tell me more about the old city. " * 16})
        history.append({"role": "assistant", "content": f"Answer {i}: " + "The Registan square is lovely. " * 16})
    history.append({"role": "user", "content": "Summarise all of that, please."})
    long = {"model": "zowy-1", "messages": history, "temperature": 0.2, "max_completion_tokens": 1024,
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "auto"}
    image = base64.b64encode(os.urandom(750 * 1024)).decode()
    vision = {"model": "zowy-2", "messages": [system, {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image, "detail": "auto"}},
    ]}], "max_tokens": 300}
    out = {}
    for name, doc in (("1KB", short), ("20KB", long), ("1MB", vision)):
        out[name] = orjson.dumps(doc)
    return out


# ---------------------------------------------------------------- a pydantic model mirroring the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageURL(_Strict):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(_Strict):
    type: Literal["refusal"]
    refusal: str


Part = Annotated[Union[TextPart, ImagePart, RefusalPart], Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[Part]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None
    refusal: Optional[str] = None
    annotations: Optional[list[Any]] = None
    audio: Optional[Any] = None
    function_call: Optional[Any] = None


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Strict):
    include_usage: Optional[bool] = None


class ChatRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, ge=0, le=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    n: Optional[int] = Field(default=None, ge=1, le=128)
    user: Optional[str] = Field(default=None, max_length=256)
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[Union[Literal["auto", "none", "required"], dict[str, Any]]] = None
    seed: Optional[int] = None


# ---------------------------------------------------------------- the run


def _validator() -> SchemaValidator:
    return getattr(chat, "_chat_validator", None) or SchemaValidator(chat.CHAT_REQUEST_SCHEMA)


def candidates() -> dict:
    validator = _validator()
    return {
        "parse_chat_request (gateway: validate_json + role checks)": chat.parse_chat_request,
        "pydantic-core validate_json": validator.validate_json,
        "orjson.loads + validate_python": lambda body: validator.validate_python(orjson.loads(body)),
        "json.loads + pydantic BaseModel": lambda body: ChatRequest.model_validate(json.loads(body)),
        "pydantic BaseModel.model_validate_json": ChatRequest.model_validate_json,
    }


def run(quick: bool = False) -> dict:
    """Best ns/op of each candidate per payload over interleaved rounds (1 MB timings depend on the
    allocator's state and vary a lot between rounds; the best round is the comparable figure)."""
    budget, repeat, rounds = (0.03, 3, 1) if quick else (0.2, 5, 3)
    bodies = payloads()
    out: dict = {}
    for _ in range(rounds):
        for name, fn in candidates().items():
            row = out.setdefault(name, {})
            for size, body in bodies.items():
                fn(body)  # each candidate must accept every payload
                result = measure(lambda: fn(body), budget, repeat)
                result["bytes"] = len(body)
                seen = row.get(size)
                if seen is None:
                    result["rounds_ns"] = [result["ns_per_op"]]
                    row[size] = result
                else:
                    seen["rounds_ns"].append(result["ns_per_op"])
                    if result["ns_per_op"] < seen["ns_per_op"]:
                        result["rounds_ns"] = seen["rounds_ns"]
                        row[size] = result
    return out


def choice(results: dict) -> str:
    sizes = list(next(iter(results.values())).keys())
    wins = []
    for size in sizes:
        best = min((r[size]["ns_per_op"], name) for name, r in results.items() if not name.startswith("parse_chat"))
        wins.append(f"{size}: {best[1]}")
    return "Fastest parse + validate per size (excluding the gateway's full function): " + "; ".join(wins) + "."
