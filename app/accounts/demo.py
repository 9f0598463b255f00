"""Demo mode's way into the console: an owner of the demo account with a random password and, when no
admin token is configured, a random one for operators; both kept in the data directory (mode 0600)
and printed at every start."""
from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Settings
from ..store import open_store
from . import owners
from .audit import CLI

OWNER_FILE = "demo-owner"
TOKEN_FILE = "demo-admin-token"
EMAIL = "demo@example.com"


@dataclass(frozen=True, slots=True)
class DemoAccess:
    url: str
    email: str
    password: str
    admin_token: str | None  # only when demo mode made one

    def lines(self) -> list[str]:
        out = [f"Console: {self.url}", f"  sign in as {self.email} with password {self.password}"]
        if self.admin_token:
            out.append(f"  operators: admin token {self.admin_token}")
        return out


def prepare(settings: Settings) -> tuple[Settings, DemoAccess]:
    """Settings with an admin token (made for the demo when none is set), and the demo sign-in."""
    made = None
    if not settings.admin_token:
        made = _kept(Path(settings.data_dir) / TOKEN_FILE, lambda: secrets.token_hex(24))
        settings = settings.with_(admin_token=made)
    email, password = asyncio.run(_owner(settings))
    return settings, DemoAccess(f"http://{settings.host}:{settings.port}/console", email, password, made)


def _kept(path: Path, make) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = make()
    _write(path, value + "\n")
    return value


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def _owner(settings: Settings) -> tuple[str, str]:
    """The demo owner's email and password: the kept ones while they still sign in, else a new owner."""
    path = Path(settings.data_dir) / OWNER_FILE
    store = open_store(settings)
    try:
        await store.init()
        account = await store.account("demo")
        if path.exists():
            email, _, password = path.read_text().strip().partition("\n")
            found = await store.owner_login(email)
            if found and found[0].account_id == account.id and await asyncio.to_thread(owners.verify_password, password, found[1]):
                return email, password
        email = EMAIL if await store.owner_login(EMAIL) is None else f"demo-{secrets.token_hex(4)}@example.com"
        password = secrets.token_urlsafe(12)
        await owners.create_owner(store, settings, account, email, password, CLI)
        _write(path, f"{email}\n{password}\n")
        return email, password
    finally:
        await store.close()
