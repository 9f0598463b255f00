"""The gateway's error tree and its rendering as the OpenAI error envelope.

Every failure a caller can see is one of these: its ``status``, ``headers`` and ``body()`` (the
envelope) are what the HTTP layer sends (http/app.py's error handler).
"""
from __future__ import annotations

import orjson


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "server_error"
    message = "The server had an error while processing your request."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        super().__init__(self.message)

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"
    message = "The request is invalid."


class InvalidApiKey(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    message = "Incorrect API key provided. Pass a valid key as 'Authorization: Bearer <key>'."


class InvalidSession(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_session"
    message = "Sign in first: pass the session token as 'Authorization: Bearer <token>' or the zowy_session cookie."


class InvalidCredentials(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_credentials"
    message = "Incorrect email or password."


class InvalidSignature(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_signature"
    message = "The webhook signature is missing or does not match the body."


class AdminUnauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_admin_token"
    message = "A valid admin token is required."


class AdminDisabled(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "admin_disabled"
    message = "The admin API is disabled: set ZOWY_ADMIN_TOKEN to enable it."


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"
    message = "You are not allowed to do this."


class WebhookDisabled(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "webhook_disabled"
    message = "The top-up webhook is disabled: set ZOWY_TOPUP_SECRET to enable it."


class InsufficientQuota(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"
    message = (
        "You have no active AI Chat package with tokens left. "
        "Top up by buying a Pro or Business package at https://zowy.ai/pricing."
    )


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    message = "The requested resource does not exist."


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    message = "This method is not allowed for this endpoint."


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    message = "The request body was not received in time."


class HeaderTimeout(RequestTimeout):
    message = "The request headers were not received in time."


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    message = "The request body is too large."


class HeaderTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"
    message = "The request headers are too large."


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"
    message = "The resource already exists."


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    message = "Rate limit reached for requests."


class ClientGone(GatewayError):
    """The caller hung up; nobody reads this answer, and it is not the gateway's failure."""

    status = 400
    type = "invalid_request_error"
    code = "client_closed_request"
    message = "The client closed the connection."


class ServerError(GatewayError):
    pass


class UpstreamError(GatewayError):
    """The model provider failed or answered with something we cannot relay."""

    status = 502
    type = "server_error"
    code = "upstream_error"
    message = "The model backend failed to process the request. Please retry."


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "overloaded"
    message = "The model is currently overloaded. Please retry shortly."


class StreamCut(GatewayError):
    """A stream the gateway ended itself: it is shutting down and the drain deadline passed."""

    status = 503
    type = "server_error"
    code = "server_shutting_down"
    message = "The server is restarting and ended this response early. Please retry."


class StoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "storage_unavailable"
    message = "The service is temporarily unavailable. Please retry shortly."


class UpstreamTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    message = "The model backend did not answer in time. Please retry."
