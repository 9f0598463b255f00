"""Every error renders as the OpenAI envelope with the right status, type and code."""
from __future__ import annotations

import json

import pytest

from app.access.windows import Decision, duration
from app.core import errors

CASES = [
    (errors.InvalidRequest("bad", param="x"), 400, "invalid_request_error", "invalid_value"),
    (errors.InvalidApiKey(), 401, "invalid_request_error", "invalid_api_key"),
    (errors.InsufficientQuota(), 402, "insufficient_quota", "insufficient_quota"),
    (errors.ModelNotFound(param="model"), 404, "invalid_request_error", "model_not_found"),
    (errors.NotFound(), 404, "invalid_request_error", "not_found"),
    (errors.MethodNotAllowed(), 405, "invalid_request_error", "method_not_allowed"),
    (errors.PayloadTooLarge(), 413, "invalid_request_error", "request_too_large"),
    (errors.RateLimited(), 429, "requests", "rate_limit_exceeded"),
    (errors.ServerError(), 500, "server_error", "server_error"),
    (errors.UpstreamError(), 502, "server_error", "upstream_error"),
    (errors.Overloaded(), 503, "server_error", "overloaded"),
    (errors.StoreUnavailable(), 503, "server_error", "storage_unavailable"),
    (errors.UpstreamTimeout(), 504, "server_error", "upstream_timeout"),
]


@pytest.mark.parametrize("error, status, type_, code", CASES)
def test_envelope(error, status, type_, code):
    body = json.loads(error.body())
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert error.status == status
    assert body["error"]["type"] == type_
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_param_travels():
    assert json.loads(errors.InvalidRequest("m", param="messages[0].role").body())["error"]["param"] == "messages[0].role"


@pytest.mark.parametrize("seconds, text", [(0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (59.9994, "59.999s"), (360, "6m0s"), (3723, "1h2m3s")])
def test_duration_format(seconds, text):
    assert duration(seconds) == text


def test_rate_limit_headers_describe_binding_window():
    now = 3600 * 100 + 60 * 10 + 15.5  # 15.5 s into a minute, 10 minutes into an hour
    ok = Decision(True, 60, 1, 1000, 400, now)
    h = ok.headers()
    assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-reset-requests"] == "44.5s"
    assert h["x-ratelimit-remaining-requests-hour"] == "600"
    assert h["x-ratelimit-reset-requests-hour"] == "49m45s"
    assert "retry-after" not in h
    hour_bound = Decision(True, 1000, 3, 5, 4, now)
    assert hour_bound.headers()["x-ratelimit-limit-requests"] == "5"
    rejected = Decision(False, 60, 60, 1000, 400, now)
    h = rejected.headers()
    assert h["retry-after"] == "45" and h["retry-after-ms"] == "44500"
    assert "60 requests per minute" in rejected.message()
    hour_full = Decision(False, 1000, 3, 5, 5, now)
    assert hour_full.headers()["retry-after"] == str(49 * 60 + 45)
    assert "5 requests per hour" in hour_full.message()
