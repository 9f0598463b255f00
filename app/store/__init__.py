"""Storage: the contract (``contracts/``, one module per feature) and the backend chosen by settings,
SQLite (``sqlite/``) or MongoDB (``mongo/``), each split per feature as the contract is."""
from __future__ import annotations

from ..core.config import Settings
from .contracts import Store

__all__ = ["Store", "open_store"]


def open_store(settings: Settings) -> Store:
    """MongoDB when ``ZOWY_MONGO_URL`` is set, else the embedded SQLite file."""
    if settings.mongo_url:
        from .mongo import MongoStore

        return MongoStore(settings.mongo_url, settings.mongo_db, timeout=settings.store_timeout)
    from .sqlite import SqliteStore

    return SqliteStore(settings.sqlite_file, timeout=settings.store_timeout)
