"""The Responses shape tests translate in process: no replay upstream to reset."""
import pytest


@pytest.fixture(autouse=True)
def fresh_replay():
    yield
