"""A gateway whose models are served by the replay upstream, and a customer to call it with."""
from __future__ import annotations

import pytest

from tests import support
from tests.conformance.replay import ReplayServer

# Public model per recorded provider; zowy-2 is a Gemini 3 target (signatures required upstream).
PUBLIC = {"gemini": "zowy-1", "openai": "zowy-1-pro"}


def replay_models(path, url: str):
    key = f'api_key_env = "{support.UPSTREAM_KEY_ENV}"'
    path.write_text(f"""
[timeouts]
connect = 2.0
first_byte = 10.0
idle = 5.0
total = 30.0
[models.zowy-1]
targets = ["gemini-flash"]
[models.zowy-1-pro]
targets = ["gpt-mini"]
[models.zowy-2]
targets = ["gemini-next"]
vision = true
[targets.gemini-flash]
provider = "gemini"
base_url = "{url}/v1beta/openai"
model = "gemini-2.5-flash"
{key}
[targets.gemini-next]
provider = "gemini"
base_url = "{url}/v1beta/openai"
model = "gemini-3-flash"
{key}
[targets.gpt-mini]
provider = "openai"
base_url = "{url}/v1"
model = "gpt-5.4-mini"
{key}
max_tokens_field = "max_completion_tokens"
""")
    return path


@pytest.fixture(scope="session")
def replay():
    server = ReplayServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def replay_gateway(tmp_path_factory, replay):
    tmp = tmp_path_factory.mktemp("conformance")
    gateway = support.start_gateway(tmp / "gw", replay_models(tmp / "models.toml", replay.url), ZOWY_UPSTREAM_ATTEMPTS="1")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def replay_customer(replay_gateway) -> support.Customer:
    return support.new_customer(replay_gateway)


@pytest.fixture(autouse=True)
def fresh_replay(replay):
    replay.reset()
    yield
    assert replay.pending() == 0, "a queued recording was not asked for"
