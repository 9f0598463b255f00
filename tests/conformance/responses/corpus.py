"""The recorded Responses API exchanges under recordings/, and the chat traffic that says the same
thing: what a Chat Completions upstream would have streamed for each recorded answer.

A recorded answer's reasoning items have no chat counterpart (OpenAI's reasoning does not travel
through Chat Completions), so they are left out of the comparison, with their events.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

RECORDINGS = Path(__file__).with_name("recordings")
# Object keys OpenAI writes that the gateway does not: OpenAI's billing, penalties it has no request
# field for (Responses requests cannot set them), moderation and hosted-tool usage.
NOT_WRITTEN = frozenset(("billing", "frequency_penalty", "presence_penalty", "moderation", "tool_usage"))
# Reasoning settings of 2026 models that Responses requests to this gateway cannot set.
NOT_WRITTEN_REASONING = frozenset(("context", "mode"))
# Keys of recordings newer than 2025-10 that the gateway writes always.
ALWAYS_WRITTEN = frozenset(("completed_at", "prompt_cache_retention"))


@dataclass(frozen=True)
class Recorded:
    file: str
    turn: int
    request: dict | None
    status: int
    body: str
    fidelity: str

    @property
    def id(self) -> str:
        return f"{self.file}#{self.turn}"

    def events(self) -> list[dict]:
        """The recorded stream's events (SSE, or one payload per line for reframed fixtures)."""
        body = self.body
        if body.lstrip().startswith("{") and "\ndata:" not in body:
            lines = [line for line in body.splitlines() if line.strip()]
            try:
                return [json.loads(line) for line in lines]
            except json.JSONDecodeError:
                return []
        out = []
        for block in re.split(r"\n\n", body):
            data = [line[6:] if line.startswith("data: ") else line[5:] for line in block.split("\n") if line.startswith("data:")]
            if data:
                out.append(json.loads("\n".join(data)))
        return out

    @property
    def stream(self) -> bool:
        events = self.events()
        return len(events) > 1

    def streams(self) -> list[list[dict]]:
        """The recorded stream's responses: a fixture may hold several, each from response.created."""
        out: list[list[dict]] = []
        for event in self.events():
            if event.get("type") == "response.created" or not out:
                out.append([])
            out[-1].append(event)
        return out


def load() -> list[Recorded]:
    out = []
    for path in sorted(RECORDINGS.glob("*.json")):
        doc = json.loads(path.read_text())
        turns = doc["turns"] if "turns" in doc else [{"request": doc.get("request"), "response": doc["response"]}]
        for i, turn in enumerate(turns):
            request = turn.get("request") or {}
            out.append(Recorded(path.stem, i, request.get("body"), turn["response"]["status"], turn["response"]["body"],
                                doc["fidelity"]))
    return out


def without_reasoning(events: list[dict]) -> list[dict]:
    """The events of items other than reasoning ones, output indexes renumbered as if they were absent."""
    reasoning = {e["output_index"] for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "reasoning"}
    kept = []
    for event in events:
        index = event.get("output_index")
        if index in reasoning or event["type"].startswith("response.reasoning"):
            continue
        if index is not None:
            event = {**event, "output_index": index - sum(1 for r in reasoning if r < index)}
        kept.append(event)
    return kept


def chat_stream(events: list[dict]) -> list[bytes]:
    """What a Chat Completions upstream streams for the recorded answer: the same text and
    arguments in the same pieces, the same finish and usage."""
    base = {"id": "chatcmpl-replay", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06"}

    def chunk(delta=None, finish=None, usage=None, choices=True):
        doc = dict(base)
        doc["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}] if choices else []
        if usage is not None:
            doc["usage"] = usage
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    calls = 0
    call_index: dict[str, int] = {}
    terminal = events[-1]
    for event in without_reasoning(events):
        kind = event["type"]
        if kind == "response.output_item.added" and event["item"]["type"] == "function_call":
            item = event["item"]
            call_index[item["id"]] = calls
            out.append(chunk({"tool_calls": [{"index": calls, "id": item["call_id"], "type": "function",
                                              "function": {"name": item["name"], "arguments": ""}}]}))
            calls += 1
        elif kind == "response.output_text.delta":
            out.append(chunk({"content": event["delta"]}))
        elif kind == "response.refusal.delta":
            out.append(chunk({"refusal": event["delta"]}))
        elif kind == "response.function_call_arguments.delta":
            out.append(chunk({"tool_calls": [{"index": call_index[event["item_id"]], "function": {"arguments": event["delta"]}}]}))
    if terminal["type"] == "response.incomplete":
        finish = "length"
    else:
        finish = "tool_calls" if calls else "stop"
    out.append(chunk(finish=finish))
    usage = terminal.get("response", {}).get("usage")
    if usage:
        out.append(chunk(usage=chat_usage(usage), choices=False))
    return out + [b"data: [DONE]\n\n"]


def chat_usage(usage: dict) -> dict:
    return {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["input_tokens_details"]["cached_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"]},
    }


def chat_completion(response: dict) -> dict:
    """The chat completion a Chat Completions upstream answers for the recorded response object."""
    text = refusal = None
    calls = []
    for item in response["output"]:
        if item["type"] == "message":
            for part in item["content"]:
                if part["type"] == "output_text":
                    text = (text or "") + part["text"]
                elif part["type"] == "refusal":
                    refusal = (refusal or "") + part["refusal"]
        elif item["type"] == "function_call":
            calls.append({"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}})
    message = {"role": "assistant", "content": text, "refusal": refusal}
    if calls:
        message["tool_calls"] = calls
    if response["status"] == "incomplete":
        finish = "length"
    else:
        finish = "tool_calls" if calls else "stop"
    doc = {"id": "chatcmpl-replay", "object": "chat.completion", "created": 1, "model": "zowy-1",
           "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
    if response.get("usage"):
        doc["usage"] = chat_usage(response["usage"])
    return doc
