"""The public models in Anthropic's shape, for callers that send ``anthropic-version`` (the anthropic
SDK's ``models.list()`` / ``models.retrieve()``)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable


def model_info(model_id: str, created: int) -> dict:
    """One model as Anthropic describes it."""
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": datetime.fromtimestamp(created, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def model_page(models: Iterable[tuple[str, int]]) -> dict:
    """Every model the key may use, as one page (``has_more`` false)."""
    data = [model_info(model_id, created) for model_id, created in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
