"""Identifiers the gateway makes: request ids (unique, not secret) and record ids (random)."""
from __future__ import annotations

import os
import random
import secrets
import time

# Request ids need to be unique, not secret: a generator seeded from the OS once per process
# (and again in a forked child) instead of a system call per request.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """24 hex digits: the millisecond (40 bits, wrapping every ~35 years) then 56 random bits. Ids made
    close in time sort close, so the ledger's index on them grows at its end instead of every insert
    touching a page of its own (``python -m bench.micro.ledger --ids``)."""
    return f"{int(time.time() * 1000) & 0xFFFFFFFFFF:010x}{_ids.getrandbits(56):014x}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"
