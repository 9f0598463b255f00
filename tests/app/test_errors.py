"""Every refusal in process, as OpenAI phrases it: 400s naming the field, 401, 402, 404, 405, 429
with Retry-After; a refused request reaches no upstream, is not billed, and (refused before the
windows) is not counted against the key's limits. (413 for a body over ZOWY_MAX_BODY_BYTES is
Sanic's HTTP protocol's, which an ASGI client does not pass through: tests/routes/test_observability.py.)"""
from __future__ import annotations

import time

import orjson
import pytest

from tests.app.conftest import error_of, user

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, param, code", [
    ({"model": "zowy-1", "messages": HI, "temperature": 3}, "temperature", None),
    ({"model": "zowy-1", "messages": HI, "top_p": 7}, "top_p", None),
    ({"model": "zowy-1", "messages": []}, "messages", "empty_array"),
    ({"model": "zowy-1", "messages": HI, "surprise": 1}, "surprise", None),
    ({"messages": HI}, "model", None),
    ({"model": "zowy-1", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", None),
    ({"model": "zowy-1", "messages": HI, "n": 0}, "n", None),
    ({"model": "zowy-1", "messages": HI, "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", None),
    ({"model": "zowy-1", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}]},
     "messages[0].content[1].type", "invalid_content_type"),
    ({"model": "zowy-1-pro", "messages": HI, "temperature": 0.2}, "temperature", "unsupported_parameter"),
    ({"model": "zowy-1-pro", "messages": HI, "top_p": 0.5, "reasoning_effort": "low"}, "top_p", "unsupported_parameter"),
])
async def test_a_bad_body_is_a_400_naming_the_field(gateway, customer, body, param, code):
    sent = len(gateway.transport.requests)
    response = await gateway.chat(customer, body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    if code is not None:
        assert error["code"] == code
    assert len(gateway.transport.requests) == sent
    assert response.headers["x-request-id"]
    assert await gateway.ledger_count(customer.account_id) == 0


async def test_a_body_that_is_not_json_is_a_400(gateway, customer):
    for raw, content_type, param in ((b"{nope", "application/json", "body"), (b"[1, 2]", "application/json", "body"),
                                     (orjson.dumps(user("hi")), "text/plain", "content-type")):
        response = await gateway.chat(customer, raw, headers={"content-type": content_type})
        assert response.status_code == 400, (raw, response.text)
        assert error_of(response)["param"] == param, (raw, error_of(response))


@pytest.mark.parametrize("authorization, says", [
    (None, "You didn't provide an API key"),
    ("Bearer zk-not-a-real-key", "Incorrect API key"),
    ("Basic dXNlcjpwYXNz", "Incorrect API key"),
])
async def test_no_key_or_a_wrong_one_is_a_401(gateway, authorization, says):
    headers = {"authorization": authorization} if authorization else {}
    sent = len(gateway.transport.requests)
    response = await gateway.chat(None, user("hi"), headers=headers)
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert says in error["message"]
    assert len(gateway.transport.requests) == sent


async def test_a_revoked_key_is_a_401(gateway, customer):
    assert (await gateway.chat(customer, user("hi"))).status_code == 200
    revoked = await gateway.admin("POST", f"/admin/v1/keys/{customer.key_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    response = await gateway.chat(customer, user("hi"))
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"


async def test_no_package_is_a_402_before_any_upstream_call(gateway):
    broke = await gateway.customer(tokens=None)
    sent = len(gateway.transport.requests)
    response = await gateway.chat(broke, user("hi"))
    assert response.status_code == 402
    error = error_of(response)
    assert error["type"] == error["code"] == "insufficient_quota"
    assert len(gateway.transport.requests) == sent
    assert await gateway.ledger_count(broke.account_id) == 0


async def test_an_unknown_model_and_an_unknown_url_are_404s(gateway, customer):
    response = await gateway.chat(customer, user("hi", "gpt-4o"))
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found" and error["param"] == "model" and "'gpt-4o'" in error["message"]
    response = await gateway.request("GET", "/v1/nope", headers=customer.auth)
    assert response.status_code == 404 and error_of(response)["type"] == "invalid_request_error"
    assert "GET /v1/nope" in error_of(response)["message"]
    response = await gateway.request("GET", "/v1/models/gpt-4o", headers=customer.auth)
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"


async def test_a_wrong_method_is_a_405_naming_the_allowed_ones(gateway, customer):
    response = await gateway.request("DELETE", "/v1/chat/completions", headers=customer.auth)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


async def test_input_limits_are_4xx_naming_what_is_too_much(make_gateway):
    gateway = await make_gateway(ZOWY_MAX_MESSAGES="5", ZOWY_MAX_TEXT_CHARS="300", ZOWY_MAX_TOOLS="2",
                                 ZOWY_MAX_IMAGE_URL_BYTES="2048")
    customer = await gateway.customer()

    async def refused(**body) -> dict:
        response = await gateway.chat(customer, {"model": "zowy-2", "messages": HI, **body})
        assert 400 <= response.status_code < 500, response.text
        return {"status": response.status_code, **error_of(response)}

    error = await refused(messages=[{"role": "user", "content": "x"}] * 6)
    assert error["status"] == 400 and error["param"] == "messages" and "5" in error["message"]
    error = await refused(messages=[{"role": "user", "content": "x" * 301}])
    assert error["status"] == 400 and error["code"] == "context_length_exceeded"
    error = await refused(tools=[{"type": "function", "function": {"name": "f"}}] * 3)
    assert error["status"] == 400 and error["param"] == "tools"
    image = "data:image/png;base64," + "A" * 3000
    error = await refused(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}])
    assert error["status"] == 400 and error["param"] == "messages[0].content[0].image_url.url"
    assert gateway.transport.requests == []
    assert (await gateway.chat(customer, user("hi"))).status_code == 200


async def test_the_minute_window_counts_down_then_429_with_retry_after(gateway, monkeypatch):
    customer = await gateway.customer(per_minute=None, per_hour=None)
    now = time.time()
    pinned = now - now % 60 + 20.25  # 39.75 s before the minute ends
    monkeypatch.setattr(gateway.services.admission, "clock", lambda: pinned)
    remaining = []
    for _ in range(60):
        response = await gateway.chat(customer, user("hi"))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "60"
        assert response.headers["x-ratelimit-limit-requests-hour"] == "1000"
        assert response.headers["x-ratelimit-reset-requests"] == "39.75s"
        remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(59, -1, -1))
    assert response.headers["x-ratelimit-remaining-requests-hour"] == "940"
    sent = len(gateway.transport.requests)
    refused = await gateway.chat(customer, user("hi"))
    assert refused.status_code == 429
    error = error_of(refused)
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert "limited to 60 requests per minute" in error["message"] and "try again in 39.75s" in error["message"]
    assert refused.headers["retry-after"] == "40" and refused.headers["retry-after-ms"] == "39750"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0" and refused.headers["x-request-id"]
    assert len(gateway.transport.requests) == sent
    assert await gateway.ledger_count(customer.account_id) == 60  # the refusal is not billed
    pinned += 40  # the next minute
    assert (await gateway.chat(customer, user("hi"))).status_code == 200


async def test_the_hour_window_binds_when_smaller(gateway, monkeypatch):
    customer = await gateway.customer(per_minute=1000, per_hour=5)
    now = time.time()
    monkeypatch.setattr(gateway.services.admission, "clock", lambda: now - now % 3600 + 600)
    for left in range(4, -1, -1):
        response = await gateway.chat(customer, user("hi"))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        assert response.headers["x-ratelimit-remaining-requests"] == str(left)
    refused = await gateway.chat(customer, user("hi"))
    assert refused.status_code == 429 and "5 requests per hour" in error_of(refused)["message"]
    assert refused.headers["retry-after"] == "3000"


async def test_requests_refused_before_the_windows_do_not_count(gateway):
    customer = await gateway.customer(per_minute=None, per_hour=None)
    for _ in range(5):
        assert (await gateway.chat(customer, {"model": "zowy-1", "messages": []})).status_code == 400
        assert (await gateway.chat(None, user("hi"), headers={"authorization": "Bearer zk-wrong"})).status_code == 401
    response = await gateway.chat(customer, user("hi"))
    assert response.headers["x-ratelimit-remaining-requests"] == "59"
