"""An open upstream stream: the bytes to send to the caller, read and rewritten one read at a time,
with its idle and total deadlines; it raises the gateway's error if the upstream breaks, and closes
itself when it ends, fails, or its reader leaves (``aclose``, or ``async with``)."""
from __future__ import annotations

import asyncio
from typing import Callable

from ..core.errors import GatewayError, StreamCut, UpstreamError, UpstreamTimeout
from ..wire.rewrite import MalformedUpstream, StreamRewriter
from .transport_base import Response


class UpstreamStream:
    """An open upstream stream whose first event has been read. Iterate it for the bytes to send to
    the caller; it raises a GatewayError if the stream breaks, and closes itself when it ends (the
    connection goes back to the pool after a clean end)."""

    __slots__ = (
        "_response", "_read", "_classify", "rewriter", "_first", "_idle", "_deadline", "_loop", "_timer",
        "_last", "_timed_out", "_cut", "_open", "_ending", "_relay", "_write",
    )

    def __init__(self, response: Response, rewriter: StreamRewriter, first: bytes, idle: float, deadline: float,
                 classify: Callable[[BaseException], str | None], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._response = response
        self._read = response.content.readany
        self._classify = classify
        self.rewriter = rewriter
        self._first: bytes | None = first
        self._idle = idle
        self._deadline = deadline
        self._loop = loop or asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._cut = False
        self._open = True
        self._ending: GatewayError | None = None
        self._relay: asyncio.Future | None = None
        self._write: Callable[[bytes, bool], bool] | None = None

    def __aiter__(self) -> "UpstreamStream":
        return self

    async def __anext__(self) -> bytes:
        first = self._first
        if first is not None:
            self._first = None
            if first:
                return first
        rewriter = self.rewriter
        while not rewriter.done and self._open:
            if self._timer is None:
                self._arm()  # the first wait: a stream whose first read held it all never needs the timer
            try:
                chunk = await self._read()
            except Exception as exc:
                raise self._broken(exc) from None
            try:
                out = self._rewrite(chunk)
            except GatewayError as error:
                raise self._fail(error) from None
            if not chunk and not rewriter.done:
                # The body ended without [DONE]: what it completed goes out, then the failure.
                self._ending = UpstreamError("The model backend ended the stream early.")
                self.close(clean=False)
                if out:
                    return out
                break
            if out:
                return out
        if self._ending is not None:
            error, self._ending = self._ending, None
            raise error
        self.close(clean=True)
        raise StopAsyncIteration

    def relay(self, write: Callable[[bytes, bool], bool]) -> asyncio.Future | None:
        """Rewrite each read and hand it to ``write(piece, last)`` in the upstream connection's own
        callback, with no task woken per read. The future is True once the stream's last piece was
        written; False when ``write`` says to stop (the caller's buffer is full, or it left) or
        anything else comes (the body's end, a failure, a timer: iterating reads it as ever); it
        raises what iterating would have raised for a read. None when the stream cannot be relayed
        so now (its first piece not taken yet, ended, or a transport without ``attach``)."""
        attach = getattr(self._response, "attach", None)
        if attach is None or self._first is not None or not self._open or self.rewriter.done:
            return None
        if not attach(self._relayed, self.unrelay):
            return None
        if self._timer is None:
            self._arm()
        self._write = write
        relay = self._relay = self._loop.create_future()
        return relay

    def _rewrite(self, chunk: bytes) -> bytes:
        """The caller's bytes of one read (b"": the body's end); the upstream's failure raised."""
        self._last = self._loop.time()
        rewriter = self.rewriter
        try:
            out = rewriter.feed(chunk) if chunk else rewriter.finish()
        except MalformedUpstream:
            raise UpstreamError("The model backend sent an unreadable event.") from None
        if rewriter.error is not None:
            raise UpstreamError("The model backend failed while streaming the response.")
        return out

    def _relayed(self, chunk: bytes) -> None:
        try:
            out = self._rewrite(chunk)
        except Exception as exc:
            self.unrelay(exc)
            return
        done = self.rewriter.done
        if (out or done) and not self._write(out, done) or done:
            self.unrelay(done)

    def unrelay(self, outcome: bool | Exception = False) -> None:
        """End the relay: its future gets ``outcome``; a failure closes the stream first."""
        relay = self._relay
        if relay is None:
            return
        self._relay = self._write = None
        self._response.detach()
        if isinstance(outcome, Exception):
            if isinstance(outcome, GatewayError):
                self.close(clean=False)
            if not relay.done():
                relay.set_exception(outcome)
        elif not relay.done():
            relay.set_result(outcome)

    def _arm(self) -> None:
        self._timer = self._loop.call_at(min(self._last + self._idle, self._deadline), self._check)

    def _check(self) -> None:
        """The idle timer: one per stream, set at its first wait for a read and moved along lazily
        instead of a timeout per read."""
        now = self._loop.time()
        if now >= self._deadline or now - self._last >= self._idle:
            self._timed_out = True
            self._response.close()
        elif self._open:
            self._arm()

    def _broken(self, exc: Exception) -> GatewayError:
        if self._cut:
            return self._fail(StreamCut())
        if self._timed_out:
            return self._fail(UpstreamTimeout("The model backend stopped sending the response."))
        if self._classify(exc) is None:
            self.close(clean=False)
            raise exc
        return self._fail(UpstreamError("The model backend connection failed mid-response."))

    def _fail(self, error: GatewayError) -> GatewayError:
        self.close(clean=False)
        return error

    def cut(self) -> None:
        """End the stream now (the drain deadline): the reader sees StreamCut."""
        if self._open:
            self._cut = True
            self._response.close()

    async def aclose(self) -> None:
        """Drop the stream where it stands (the caller stopped reading); idempotent."""
        self.close()

    async def __aenter__(self) -> "UpstreamStream":
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()

    def close(self, clean: bool = False) -> None:
        """Release the connection to the pool after a clean end, drop it otherwise; idempotent."""
        if not self._open:
            return
        self._open = False
        if self._timer is not None:
            self._timer.cancel()
        if clean:
            self._response.release()
        else:
            self._response.close()
