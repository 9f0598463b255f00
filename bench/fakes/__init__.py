"""Upstream doubles: handlers that answer upstream chat requests (a ``MockRequest`` in, a
``MockResponse`` out, as app/upstream/mock.py defines them), served in process through
``MockTransport`` or behind a real socket through ``HandlerServer`` (server.py).

The fake provider (provider.py, with its ``[[fake:...]]`` directives) is one; the demo model
(app/upstream/demo.py) and the replay of recordings (tests/conformance/replay.py) are others.
"""
