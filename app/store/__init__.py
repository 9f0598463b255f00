"""Storage: the domain contract and the backend chosen by settings."""
from __future__ import annotations

from ..core.config import Settings
from .contract import Account, Conflict, KeyRecord, Mismatch, Package, Store, UsageRow, WindowCount

__all__ = ["Account", "Conflict", "KeyRecord", "Mismatch", "Package", "Store", "UsageRow", "WindowCount", "open_store"]


def open_store(settings: Settings) -> Store:
    """MongoDB when ``ZOWY_MONGO_URL`` is set, else the embedded SQLite file."""
    if settings.mongo_url:
        from .mongo import MongoStore

        return MongoStore(settings.mongo_url, settings.mongo_db, timeout=settings.store_timeout)
    from .sqlite import SqliteStore

    return SqliteStore(settings.sqlite_file, timeout=settings.store_timeout)
