"""SIGTERM and SIGINT from the first line of ``python -m app`` to its exit: held until the command
that runs takes them (the supervisor and its workers stop cleanly and exit 0; a one-shot command gets
the default actions back), and ignored once a stop is done, so that no signal ends the process
while it exits (the interpreter resets caught signals to the default action as it shuts down)."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_held: list[int] | None = None


def hold() -> None:
    """Keep every stop signal from now on, for ``take``."""
    global _held
    _held = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, _keep)


def _keep(signum: int, frame) -> None:
    if _held is not None:
        _held.append(signum)


def take() -> list[int]:
    """The stop signals held so far (call after installing the handlers that replace the hold)."""
    global _held
    taken, _held = _held or [], None
    return taken


def release() -> None:
    """Back to the default actions, when held; a signal held meanwhile acts now."""
    if _held is None:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in take():
        signal.raise_signal(sig)


def ignore() -> None:
    """The stop is done: later stop signals change nothing, and the exit status stays the one returned."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
