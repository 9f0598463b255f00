"""Account owners, their one-time invites, and sessions (owners' and the console operators'), each
session known by the hash of its bearer token."""
from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Owner:
    """A person who signs in to run an account."""

    id: str
    account_id: str
    email: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Invite:
    id: str
    account_id: str
    email: str
    created_at: float
    expires_at: float
    accepted_at: float | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in owner; the store knows it by the hash of its bearer token."""

    token_hash: str
    account_id: str
    owner_id: str
    created_at: float
    expires_at: float


class OwnerStore(abc.ABC):
    """What a backend does with owners, invites and sessions."""

    @abc.abstractmethod
    async def create_owner(self, owner: Owner, password_hash: str) -> Owner:
        """Conflict when the email is taken."""

    @abc.abstractmethod
    async def owner_login(self, email: str) -> tuple[Owner, str] | None:
        """The owner signing in with ``email`` and the stored password hash."""

    @abc.abstractmethod
    async def owners(self, account_id: str) -> list[Owner]: ...

    @abc.abstractmethod
    async def create_invite(self, invite: Invite, token_hash: str) -> Invite: ...

    @abc.abstractmethod
    async def claim_invite(self, token_hash: str, now: float) -> Invite | None:
        """Mark an unexpired, unused invite accepted; the invite only for the one caller that did."""

    @abc.abstractmethod
    async def create_session(self, session: Session) -> Session: ...

    @abc.abstractmethod
    async def session(self, token_hash: str, now: float) -> Session | None:
        """The unexpired session of a token hash."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> bool: ...
