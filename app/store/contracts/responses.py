"""Stored responses of the Responses API: a response and its input items, kept per account until they
expire, read back by id (and a conversation's chain of ids at once)."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored response: the response object and its input items as JSON, the ids of the responses
    it continues (oldest first), and until when it is kept."""

    id: str
    account_id: str
    created_at: float
    expires_at: float
    chain: tuple[str, ...]
    response: bytes
    input: bytes


class ResponseStore(abc.ABC):
    """What a backend does with stored responses. Every read checks ``expires_at`` itself, whenever
    the backend drops expired ones."""

    @abc.abstractmethod
    async def save_response(self, stored: StoredResponse) -> None: ...

    @abc.abstractmethod
    async def stored_responses(self, account_id: str, ids: Sequence[str], now: float) -> list[StoredResponse]:
        """The account's stored responses among ``ids`` that have not expired, in no order."""

    @abc.abstractmethod
    async def delete_response(self, account_id: str, response_id: str, now: float) -> bool:
        """Delete one of the account's stored responses; False when it has none by that id."""
