"""Stream fidelity: the bytes a caller gets from the gateway must be the bytes the upstream sent,
except the rewritten identity tokens (``"model"``, ``"id"``, ``"system_fingerprint"``).

A TCP tee between the gateway and the fake upstream records what the upstream really sent; one
streamed request goes through the gateway; both bodies are de-chunked and compared.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
from urllib.parse import urlsplit

_TOKEN = {
    "model": re.compile(rb'"model"\s*:\s*"[^"]*"'),
    "id": re.compile(rb'"id"\s*:\s*"[^"]*"'),
    "system_fingerprint": re.compile(rb'"system_fingerprint"\s*:\s*(?:"[^"]*"|null)'),
}


class Tee:
    """Forward 127.0.0.1:``port`` to the upstream; keep every byte the upstream sends back."""

    def __init__(self, port: int, upstream_port: int) -> None:
        self.port, self.upstream_port = port, upstream_port
        self.responses: list[bytearray] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Tee":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tee did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._ready.set()
        await self._stop.wait()
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        record = bytearray()
        self.responses.append(record)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bytearray | None) -> None:
            try:
                while data := await src.read(65536):
                    if keep is not None:
                        keep += data
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        try:
            await asyncio.gather(pipe(reader, up_writer, None), pipe(up_reader, writer, record))
        except asyncio.CancelledError:  # the tee is shutting down; the connection goes with it
            writer.close()
            up_writer.close()


def dechunk(raw: bytes) -> tuple[bytes, bytes]:
    """(headers, body) of the first HTTP/1.1 response in ``raw``, chunked encoding removed."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return head, rest[: int(length.group(1))] if length else rest
    body = bytearray()
    pos = 0
    while True:
        end = rest.index(b"\r\n", pos)
        size = int(rest[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        body += rest[end + 2: end + 2 + size]
        pos = end + 2 + size + 2
    return head, bytes(body)


def expected_from(upstream: bytes, out: bytes) -> bytes:
    """The upstream body with each identity token replaced by the one the gateway sent in its place."""
    expected = upstream
    for name, pattern in _TOKEN.items():
        theirs = pattern.search(upstream)
        ours = pattern.search(out)
        if theirs and ours:
            expected = expected.replace(theirs.group(0), ours.group(0))
    return expected


def compare(upstream: bytes, out: bytes, hidden: tuple[str, ...]) -> dict:
    expected = expected_from(upstream, out)
    up_events = [e for e in expected.split(b"\n\n") if e]
    out_events = [e for e in out.split(b"\n\n") if e]
    first_diff = None
    for i, (a, b) in enumerate(zip(up_events, out_events)):
        if a != b:
            first_diff = {"event": i, "upstream_rewritten": a.decode(errors="replace")[:400],
                          "gateway": b.decode(errors="replace")[:400]}
            break
    leaks = [name for name in hidden if name.encode() in out]
    equal = expected == out
    return {
        "met": equal and not leaks,
        "bytes_equal_after_identity_rewrite": equal,
        "upstream_bytes": len(upstream),
        "gateway_bytes": len(out),
        "upstream_events": len(up_events),
        "gateway_events": len(out_events),
        "first_difference": first_diff if not equal else None,
        "upstream_names_leaked": leaks,
        "rewritten": sorted(n for n, p in _TOKEN.items() if p.search(upstream)),
    }


def check(gateway_url: str, headers: dict, model: str, tee_port: int, upstream_port: int,
          hidden: tuple[str, ...], chunks: int = 32) -> dict:
    """Send one streamed request through the gateway's ``model`` (routed via the tee); compare bytes."""
    body = json.dumps({
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"Stream fidelity check. [[fake:chunks={chunks}]]"}],
    }).encode()
    with Tee(tee_port, upstream_port) as tee:
        parts = urlsplit(gateway_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request("POST", parts.path, body, {**headers, "Content-Type": "application/json"})
            response = conn.getresponse()
            out = response.read()
            status = response.status
        finally:
            conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (tee.responses and b"0\r\n\r\n" in tee.responses[0]):
            time.sleep(0.02)
        raw = bytes(tee.responses[0]) if tee.responses else b""
    if status != 200 or not raw:
        return {"met": False, "error": f"gateway status {status}, upstream bytes {len(raw)}",
                "body": out[:500].decode(errors="replace")}
    _, upstream = dechunk(raw)
    return compare(upstream, out, hidden)
