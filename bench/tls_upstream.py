"""The fake upstream over TLS, as real providers are reached: the same server as bench/fake_upstream.py
behind a certificate made at start by a throwaway CA (bench/tls.py) that clients must be told to trust.

    python -m bench.tls_upstream --port 8443 --cert-dir /tmp/certs   # writes upstream-ca.pem there

In-process: ``server = await start_tls(certs, "127.0.0.1", 0)``; ``server.base_url`` is https://….
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

from .fake_upstream import MODES, FakeUpstream
from .tls import Certs, make_certs


class TlsFakeUpstream(FakeUpstream):
    """A FakeUpstream listening with TLS."""

    def __init__(self, certs: Certs, *args, **kwargs) -> None:
        super().__init__(*args, ssl_context=certs.server_context(), **kwargs)
        self.certs = certs


async def start_tls(certs: Certs, host: str = "127.0.0.1", port: int = 0, mode: str = "openai", **kwargs) -> TlsFakeUpstream:
    """Start a TLS fake upstream on ``host:port`` (0 = a free port) in the running loop."""
    server = TlsFakeUpstream(certs, host, port, mode, **kwargs)
    await server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tls_upstream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--mode", choices=MODES, default="openai")
    p.add_argument("--cert-dir", type=Path, help="where the CA and certificate are written (default: a temp dir)")
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    directory = args.cert_dir or Path(tempfile.mkdtemp(prefix="zowy-tls-"))
    certs = make_certs(directory)

    async def serve() -> None:
        server = await start_tls(certs, args.host, args.port, args.mode)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"TLS fake upstream listening on {server.url} ({args.mode}); CA: {certs.ca}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.close()

    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
