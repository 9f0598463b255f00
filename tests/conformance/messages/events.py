"""Reading Anthropic Messages streams in tests: the events of a body, the grammar every stream must
follow, the message they add up to, and the shapes (key paths) of recorded and produced objects."""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORDINGS = HERE / "recordings"


def events(raw: bytes | str) -> list[tuple[str, dict]]:
    """(event name, data) of each event of an SSE body; the name must equal the data's type."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            doc = json.loads("\n".join(data))
            assert name == doc["type"], (name, doc)
            out.append((name, doc))
    return out


def check_grammar(stream: list[tuple[str, dict]], complete: bool = True) -> None:
    """message_start first; blocks numbered 0, 1, … each started, given deltas of its own kind and
    stopped before the next starts; message_delta then message_stop last (when ``complete``)."""
    names = [name for name, _ in stream]
    assert names[0] == "message_start", names
    open_index, next_index, kind = None, 0, None
    ended = False
    for name, doc in stream[1:]:
        assert not ended, f"{name} after message_stop"
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index is None and doc["index"] == next_index, names
            open_index, kind = doc["index"], doc["content_block"]["type"]
            next_index += 1
        elif name == "content_block_delta":
            assert doc["index"] == open_index, names
            allowed = {"text": ("text_delta",), "tool_use": ("input_json_delta",),
                       "thinking": ("thinking_delta", "signature_delta")}[kind]
            assert doc["delta"]["type"] in allowed, (kind, doc)
        elif name == "content_block_stop":
            assert doc["index"] == open_index, names
            open_index = None
        elif name == "message_delta":
            assert open_index is None, "message_delta with a block open"
        elif name == "message_stop":
            assert names[-2] == "message_delta"
            ended = True
        elif name == "error":
            ended = True
        else:
            raise AssertionError(f"unknown event {name}")
    if complete:
        assert names[-1] == "message_stop" and open_index is None, names


def message(stream: list[tuple[str, dict]]) -> dict:
    """The message a stream adds up to, as the SDKs accumulate it (tool inputs parsed)."""
    msg: dict = {}
    partial: dict[int, str] = {}
    for name, doc in stream:
        if name == "message_start":
            msg = json.loads(json.dumps(doc["message"]))
        elif name == "content_block_start":
            msg["content"].append(dict(doc["content_block"]))
        elif name == "content_block_delta":
            block, delta = msg["content"][doc["index"]], doc["delta"]
            kind = delta["type"]
            if kind == "text_delta":
                block["text"] += delta["text"]
            elif kind == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif kind == "signature_delta":
                block["signature"] += delta["signature"]
            else:
                partial[doc["index"]] = partial.get(doc["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and doc["index"] in partial:
            text = partial.pop(doc["index"])
            msg["content"][doc["index"]]["input"] = json.loads(text) if text else {}
        elif name == "message_delta":
            msg.update(doc["delta"])
            msg["usage"].update(doc["usage"])
    return msg


def shape(value, prefix: str = "") -> set[str]:
    """Every key path of a JSON value with the type found there (lists by their items)."""
    out = set()
    if isinstance(value, dict):
        for key, item in value.items():
            out.add(f"{prefix}.{key}:{type(item).__name__ if item is not None else 'null'}")
            out |= shape(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        for item in value:
            out |= shape(item, prefix + "[]")
    return out


def kind(name: str, doc: dict) -> str:
    """What an event is, for comparing shapes: its type, and its block's or delta's type."""
    if name == "content_block_start":
        return f"{name}/{doc['content_block']['type']}"
    if name == "content_block_delta":
        return f"{name}/{doc['delta']['type']}"
    return name


def recordings() -> list[dict]:
    """Every recorded exchange (turns flattened), with the file it came from."""
    out = []
    for path in sorted(RECORDINGS.glob("*.json")):
        doc = json.loads(path.read_text())
        for turn in doc.get("turns") or [doc]:
            out.append({"file": path.stem, "fidelity": doc["fidelity"], "request": turn.get("request"),
                        "response": turn["response"]})
    return out


def recorded_stream(response: dict) -> list[tuple[str, dict]]:
    """A recorded stream's events; a reframed fixture (one JSON payload a line) is framed here."""
    body = response["body"]
    if "event:" in body or "data:" in body:
        return events(body)
    return [(doc["type"], doc) for doc in map(json.loads, filter(None, body.split("\n")))]
