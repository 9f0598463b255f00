"""Owners, invites and sessions in the SQLite store."""
from __future__ import annotations

import sqlite3

from ...core.errors import Conflict
from ..contracts.owners import Invite, Owner, Session
from .base import SqliteBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    email TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS owners_account ON owners(account_id);
CREATE TABLE IF NOT EXISTS invites (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    email TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    accepted_at REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
"""


class SqliteOwners(SqliteBase):
    async def create_owner(self, owner: Owner, password_hash: str) -> Owner:
        def run(db: sqlite3.Connection) -> Owner:
            try:
                db.execute(
                    "INSERT INTO owners (id, account_id, email, password, created_at) VALUES (?, ?, ?, ?, ?)",
                    (owner.id, owner.account_id, owner.email, password_hash, owner.created_at),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"An owner with email '{owner.email}' already exists.", param="email") from None
            return owner

        return await self._hot.run(run)

    async def owner_login(self, email: str) -> tuple[Owner, str] | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "SELECT id, account_id, email, created_at, password FROM owners WHERE email = ?", (email,)
            ).fetchone()
        )
        return (Owner(*row[:4]), row[4]) if row else None

    async def owners(self, account_id: str) -> list[Owner]:
        rows = await self._hot.run(
            lambda db: db.execute(
                "SELECT id, account_id, email, created_at FROM owners WHERE account_id = ? ORDER BY created_at, id",
                (account_id,),
            ).fetchall()
        )
        return [Owner(*r) for r in rows]

    async def create_invite(self, invite: Invite, token_hash: str) -> Invite:
        def run(db: sqlite3.Connection) -> Invite:
            try:
                db.execute(
                    "INSERT INTO invites (id, token_hash, account_id, email, created_at, expires_at, accepted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (invite.id, token_hash, invite.account_id, invite.email, invite.created_at, invite.expires_at, invite.accepted_at),
                )
            except sqlite3.IntegrityError:
                raise Conflict("The invite could not be stored; create it again.") from None
            return invite

        return await self._hot.run(run)

    async def claim_invite(self, token_hash: str, now: float) -> Invite | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "UPDATE invites SET accepted_at = ? WHERE token_hash = ? AND accepted_at IS NULL AND expires_at > ? "
                "RETURNING id, account_id, email, created_at, expires_at, accepted_at",
                (now, token_hash, now),
            ).fetchone()
        )
        return Invite(*row) if row else None

    async def create_session(self, session: Session) -> Session:
        await self._hot.run(
            lambda db: db.execute(
                "INSERT INTO sessions (token_hash, account_id, owner_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (session.token_hash, session.account_id, session.owner_id, session.created_at, session.expires_at),
            )
        )
        return session

    async def session(self, token_hash: str, now: float) -> Session | None:
        row = await self._hot.run(
            lambda db: db.execute(
                "SELECT token_hash, account_id, owner_id, created_at, expires_at FROM sessions "
                "WHERE token_hash = ? AND expires_at > ?",
                (token_hash, now),
            ).fetchone()
        )
        return Session(*row) if row else None

    async def delete_session(self, token_hash: str) -> bool:
        cur = await self._hot.run(lambda db: db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,)))
        return cur.rowcount == 1

    async def sweep(self, now: float) -> None:
        await self._slow.run(lambda db: db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)))
        await super().sweep(now)
