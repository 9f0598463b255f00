"""Identifiers the gateway makes: request ids (unique, not secret) and record ids (random)."""
from __future__ import annotations

import os
import random
import secrets

# Request ids need to be unique, not secret: a generator seeded from the OS once per process
# (and again in a forked child) instead of a system call per request.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    return f"{_ids.getrandbits(96):024x}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"
