"""The recorded exchanges under recordings/, as the conformance suite uses them: each turn's
request (or a plain one when none was recorded), the recorded response, and what it should mean."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

RECORDINGS = Path(__file__).with_name("recordings")
DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Exchange:
    """One recorded request/response pair."""

    file: str
    provider: str
    turn: int
    request: dict | None
    status: int
    content_type: str
    body: str
    shows: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.file}#{self.turn}" if self.turn else self.file

    @property
    def stream(self) -> bool:
        return self.content_type == "text/event-stream"

    @property
    def partial(self) -> bool:
        """A pasted fragment of a stream: the replay ends it with [DONE]."""
        return self.stream and "partial-stream" in self.shows

    def replayed_body(self) -> str:
        if self.partial and DONE not in self.body:
            return self.body + DONE
        return self.body

    @cached_property
    def chunks(self) -> list[dict]:
        """The stream's JSON events, in order."""
        out = []
        for event in self.replayed_body().split("\n\n"):
            data = "\n".join(line[5:].lstrip(" ") for line in event.splitlines() if line.startswith("data:"))
            if data and data != "[DONE]":
                out.append(json.loads(data))
        return out

    @cached_property
    def document(self) -> dict | list:
        return json.loads(self.body)

    def upstream_identity(self) -> set[str]:
        """Strings of this recording that name the upstream: ids, model names, fingerprints."""
        docs = self.chunks if self.stream else [self.document] if self.status == 200 else []
        found = set()
        for doc in docs:
            for key in ("id", "model", "system_fingerprint"):
                value = doc.get(key) if isinstance(doc, dict) else None
                if isinstance(value, str) and len(value) >= 6:
                    found.add(value)
        return found

    def final_usage(self) -> dict | None:
        """The usage the upstream reported last (Gemini repeats a running one on every chunk)."""
        if not self.stream:
            return self.document.get("usage") if isinstance(self.document, dict) else None
        usage = None
        for chunk in self.chunks:
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
        return usage

    def text(self, choice: int = 0) -> str | None:
        """The assistant text of one choice, reassembled."""
        if not self.stream:
            message = self.document["choices"][choice]["message"]
            return message.get("content")
        parts = [
            c["delta"].get("content") or ""
            for chunk in self.chunks for c in chunk.get("choices", []) if c.get("index", 0) == choice
        ]
        return "".join(parts) or None

    def tool_calls(self, choice: int = 0) -> list[tuple[str, str]]:
        """(name, arguments) of each tool call of one choice, reassembled from whatever the
        provider sent: OpenAI's indexed fragments or Gemini's whole calls."""
        if not self.stream:
            message = self.document["choices"][choice]["message"]
            return [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
        calls: list[list[str]] = []
        for chunk in self.chunks:
            for c in chunk.get("choices", []):
                if c.get("index", 0) != choice:
                    continue
                for call in c.get("delta", {}).get("tool_calls") or []:
                    index = call.get("index")
                    if index is None:
                        calls.append(["", ""])
                        index = len(calls) - 1
                    while len(calls) <= index:
                        calls.append(["", ""])
                    function = call.get("function") or {}
                    calls[index][0] += function.get("name") or ""
                    calls[index][1] += function.get("arguments") or ""
        return [tuple(c) for c in calls]


def load() -> list[Exchange]:
    exchanges = []
    for path in sorted(RECORDINGS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        turns = doc.get("turns") or [{"request": doc.get("request"), "response": doc["response"]}]
        for i, turn in enumerate(turns):
            response = turn["response"]
            exchanges.append(Exchange(
                file=path.stem,
                provider=doc["provider"],
                turn=i if len(turns) > 1 else 0,
                request=turn.get("request"),
                status=response["status"],
                content_type=response["content_type"].split(";")[0].strip(),
                body=response["body"],
                shows=tuple(doc.get("shows", ())),
            ))
    return exchanges
