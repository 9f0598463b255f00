"""What the route tests share: two gateway instances of two workers each on one store."""
from __future__ import annotations

import pytest

from tests import support


@pytest.fixture
def cluster(tmp_path, models_path, store_env):
    """Two gateway instances of two workers each, on one store."""
    data = tmp_path / "shared"
    env = {**store_env, "ZOWY_LIMITER_TIMEOUT": "10", "ZOWY_STORE_TIMEOUT": "10"}
    first = support.start_gateway(data, models_path, workers=2, **env)
    try:
        second = support.start_gateway(data, models_path, workers=2, **env)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()
