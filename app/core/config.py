"""Settings of one gateway process, read once from the environment and the models file.

Each setting is declared once, as a field with its variable, default and bounds; ``Settings.from_env``
reads them all in one loop. This is the only module that touches ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from ..catalog.models import DEFAULT_MODELS_FILE, ConfigError, PublicModel, demo_models, load_models

DEFAULT_PERSONA_PROMPT = (
    "You are Zowy AI, the assistant of the Zowy platform. When asked who you are, which model you "
    "are or who made you, answer that you are Zowy AI. Never name or hint at any underlying model, "
    "model family or provider.\n"
    "Ты — Zowy AI, ассистент платформы Zowy. На вопросы о том, кто ты, какая ты модель или кто тебя "
    "создал, отвечай, что ты Zowy AI. Никогда не называй базовые модели, их семейства и поставщиков."
)


def setting(env: str, default: Any, *, low: float | None = None, high: float | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """Declare a setting: its environment variable, default and bounds, in one place."""
    meta = {"env": env, "low": low, "high": high, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class RateLimits:
    per_minute: int = setting("ZOWY_RATE_LIMIT_PER_MINUTE", 60, low=1)
    per_hour: int = setting("ZOWY_RATE_LIMIT_PER_HOUR", 1000, low=1)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one chat request may hold, beyond the body size."""

    messages: int = setting("ZOWY_MAX_MESSAGES", 2048, low=1)
    text_chars: int = setting("ZOWY_MAX_TEXT_CHARS", 2_000_000, low=1)
    tools: int = setting("ZOWY_MAX_TOOLS", 128, low=0)
    image_url_bytes: int = setting("ZOWY_MAX_IMAGE_URL_BYTES", 10 * 1024 * 1024, low=1024)
    vendor_field_bytes: int = setting("ZOWY_MAX_VENDOR_FIELD_BYTES", 65536, low=256)


@dataclass(frozen=True, slots=True)
class Plans:
    pro: int = setting("ZOWY_PLAN_PRO_TOKENS", 2_000_000, low=1)
    business: int = setting("ZOWY_PLAN_BUSINESS_TOKENS", 10_000_000, low=1)

    def __contains__(self, plan: object) -> bool:
        return plan in ("pro", "business")

    def __getitem__(self, plan: str) -> int:
        if plan not in self:
            raise KeyError(plan)
        return getattr(self, plan)

    def __iter__(self):
        return iter(("pro", "business"))


@dataclass(frozen=True, slots=True)
class SelfService:
    """Account owners: sessions, invites, passwords, and how often they may sign in or redeem."""

    session_ttl: int = setting("ZOWY_SESSION_TTL", 3600, low=60)
    invite_days: int = setting("ZOWY_INVITE_DAYS", 7, low=1)
    scrypt_cost: int = setting("ZOWY_SCRYPT_COST", 15, low=10, high=20)
    # Sign-in windows (accounts/signin.py:guard): every attempt per account (a ceiling that a right
    # password from an address without failures passes), per account and address, and per address.
    signin_per_minute: int = setting("ZOWY_SIGNIN_PER_MINUTE", 10, low=1)
    signin_per_hour: int = setting("ZOWY_SIGNIN_PER_HOUR", 60, low=1)
    signin_account_ip_per_minute: int = setting("ZOWY_SIGNIN_ACCOUNT_IP_PER_MINUTE", 5, low=1)
    signin_account_ip_per_hour: int = setting("ZOWY_SIGNIN_ACCOUNT_IP_PER_HOUR", 20, low=1)
    signin_ip_per_minute: int = setting("ZOWY_SIGNIN_IP_PER_MINUTE", 30, low=1)
    signin_ip_per_hour: int = setting("ZOWY_SIGNIN_IP_PER_HOUR", 300, low=1)
    redeem_per_minute: int = setting("ZOWY_REDEEM_PER_MINUTE", 10, low=1)
    redeem_per_hour: int = setting("ZOWY_REDEEM_PER_HOUR", 100, low=1)
    max_keys: int = setting("ZOWY_MAX_KEYS_PER_ACCOUNT", 100, low=1)


@dataclass(frozen=True, slots=True)
class Hooks:
    """Signed webhooks: the inbound top-up and the outbound low-balance alerts."""

    topup_secret: str = setting("ZOWY_TOPUP_SECRET", "")
    alert_secret: str = setting("ZOWY_ALERT_SECRET", "")
    window: int = setting("ZOWY_WEBHOOK_WINDOW", 300, low=1)
    alert_check_interval: float = setting("ZOWY_ALERT_CHECK_INTERVAL", 1.0, low=0.01)
    alert_poll_interval: float = setting("ZOWY_ALERT_POLL_INTERVAL", 1.0, low=0.01)
    alert_retry_base: float = setting("ZOWY_ALERT_RETRY_BASE", 5.0, low=0.01)
    alert_retry_max: float = setting("ZOWY_ALERT_RETRY_MAX", 900.0, low=0.01)
    alert_max_attempts: int = setting("ZOWY_ALERT_MAX_ATTEMPTS", 30, low=1)
    alert_lease: float = setting("ZOWY_ALERT_LEASE", 60.0, low=1)
    alert_timeout: float = setting("ZOWY_ALERT_TIMEOUT", 10.0, low=0.1)
    alert_private_urls: bool = setting("ZOWY_ALERT_PRIVATE_URLS", False)
    # "0 %" fires once a balance can no longer cover a default answer: with reservations a balance
    # is rarely spent to the last token.
    alert_empty_below: int = setting("ZOWY_ALERT_EMPTY_BELOW", 4096, low=1)


@dataclass(frozen=True, slots=True)
class Console:
    """The web console under /console, and how long an operator stays signed in to it."""

    enabled: bool = setting("ZOWY_CONSOLE", True)
    operator_session_ttl: int = setting("ZOWY_OPERATOR_SESSION_TTL", 900, low=60)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = setting("ZOWY_HOST", "127.0.0.1")
    port: int = setting("ZOWY_PORT", 8000, low=0, high=65535)
    workers: int = setting("ZOWY_WORKERS", 1, low=1)
    data_dir: Path = setting("ZOWY_DATA_DIR", Path("var"))
    sqlite_path: Path | None = setting("ZOWY_SQLITE_PATH", None)
    mongo_url: str = setting("ZOWY_MONGO_URL", "")
    mongo_db: str = setting("ZOWY_MONGO_DB", "zowy")
    store_timeout: float = setting("ZOWY_STORE_TIMEOUT", 2.0, low=0.01)
    models_file: Path = setting("ZOWY_MODELS_FILE", DEFAULT_MODELS_FILE)
    persona_prompt: str = setting("ZOWY_IDENTITY_PROMPT", DEFAULT_PERSONA_PROMPT)
    max_body_bytes: int = setting("ZOWY_MAX_BODY_BYTES", 16 * 1024 * 1024, low=1024)
    max_header_bytes: int = setting("ZOWY_MAX_HEADER_BYTES", 8192, low=1024, high=16384)
    body_timeout: float = setting("ZOWY_BODY_TIMEOUT", 30.0, low=0.01)
    header_timeout: float = setting("ZOWY_HEADER_TIMEOUT", 10.0, low=0.01)
    request_limits: RequestLimits = RequestLimits()
    admin_token: str = setting("ZOWY_ADMIN_TOKEN", "")
    key_pepper: str = setting("ZOWY_KEY_PEPPER", "")
    key_cache_ttl: float = setting("ZOWY_KEY_CACHE_TTL", 5.0, low=0)
    reserve_slice: int = setting("ZOWY_RESERVE_SLICE", 200_000, low=0)
    reserve_share: int = setting("ZOWY_RESERVE_SHARE", 16, low=1)
    reserve_floor: int = setting("ZOWY_RESERVE_FLOOR", 50_000, low=0)
    reserve_ttl: float = setting("ZOWY_RESERVE_TTL", 60.0, low=1)
    reserve_idle: float = setting("ZOWY_RESERVE_IDLE", 2.0, low=0)
    # The shortest answer a request is served with when the balance or its key's cap cannot hold
    # the completion it allows: below this (or its own max_tokens if smaller), 402.
    min_completion_tokens: int = setting("ZOWY_MIN_COMPLETION_TOKENS", 256, low=1)
    trusted_proxies: str = setting("ZOWY_TRUSTED_PROXIES", "")
    self_service: SelfService = SelfService()
    hooks: Hooks = Hooks()
    console: Console = Console()
    rate_limits: RateLimits = RateLimits()
    limiter_timeout: float = setting("ZOWY_LIMITER_TIMEOUT", 0.5, low=0.001)
    limiter_fail_open: bool = setting("ZOWY_LIMITER_FAIL_OPEN", False)
    limiter_slice: int = setting("ZOWY_LIMITER_SLICE", 64, low=0)
    limiter_floor: int = setting("ZOWY_LIMITER_FLOOR", 2048, low=1)
    plans: Plans = Plans()
    package_days: int = setting("ZOWY_PACKAGE_DAYS", 30, low=1)
    code_days: int = setting("ZOWY_CODE_DAYS", 365, low=1)
    # How long a stored Responses API response is kept (OpenAI keeps them 30 days).
    responses_ttl: int = setting("ZOWY_RESPONSES_TTL", 30 * 86400, low=60)
    meter_batch: int = setting("ZOWY_METER_BATCH", 512, low=1)
    meter_interval: float = setting("ZOWY_METER_INTERVAL", 0.05, low=0.001)
    upstream_attempts: int = setting("ZOWY_UPSTREAM_ATTEMPTS", 3, low=1)
    retry_backoff: float = setting("ZOWY_RETRY_BACKOFF", 0.2, low=0)
    breaker_min_requests: int = setting("ZOWY_BREAKER_MIN_REQUESTS", 20, low=1)
    breaker_failure_ratio: float = setting("ZOWY_BREAKER_FAILURE_RATIO", 0.5, low=0.01, high=1)
    breaker_window: float = setting("ZOWY_BREAKER_WINDOW", 30.0, low=1)
    breaker_cooldown: float = setting("ZOWY_BREAKER_COOLDOWN", 30.0, low=0)
    breaker_min_accounts: int = setting("ZOWY_BREAKER_MIN_ACCOUNTS", 2, low=1)
    max_upstream_body_bytes: int = setting("ZOWY_MAX_UPSTREAM_BODY_BYTES", 32 * 1024 * 1024, low=1024)
    # The HTTP client to the upstreams (app/upstream/transport.py:make_transport).
    upstream_transport: str = setting("ZOWY_UPSTREAM_TRANSPORT", "aiohttp")
    drain_timeout: float = setting("ZOWY_DRAIN_TIMEOUT", 30.0, low=0)
    demo_mode: str = setting("ZOWY_DEMO", "auto", choices=("auto", "on", "off"))
    log_level: str = setting("ZOWY_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    log_format: str = setting("ZOWY_LOG_FORMAT", "json", choices=("json", "text"))
    access_log: bool = setting("ZOWY_ACCESS_LOG", True)
    metrics: str = setting("ZOWY_METRICS", "admin", choices=("admin", "public", "off"))
    # Derived when read: the public models of the models file, and whether demo mode is on.
    models: Mapping[str, PublicModel] = field(default_factory=dict)
    demo: bool = False

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def sqlite_file(self) -> Path:
        return self.sqlite_path or self.data_dir / "zowy.db"

    @property
    def store_url(self) -> str:
        return self.mongo_url or f"sqlite:///{self.sqlite_file}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``ZOWY_*`` variables (``os.environ`` when none given)."""
        env = os.environ if environ is None else environ
        values = _read(cls, env)
        for cidr in filter(None, (c.strip() for c in values["trusted_proxies"].split(","))):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"ZOWY_TRUSTED_PROXIES holds {cidr!r}, which is not an IP address or CIDR") from None
        models = load_models(values["models_file"], env)
        any_key = any(t.enabled for m in models.values() for t in m.targets)
        demo = values["demo_mode"] == "on" or (values["demo_mode"] == "auto" and not any_key)
        if demo:
            models = demo_models(models)
        return cls(**values, models=models, demo=demo)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


def export(name: str, value: str) -> None:
    """Set a variable that a library reads from the environment (prometheus-client's multiprocess
    directory, Sanic's warnings), for this process and the ones it starts."""
    os.environ[name] = value


def exported(name: str) -> str | None:
    """A variable set for a library with ``export`` (here, or by the process that started this one)."""
    return os.environ.get(name) or None


def _read(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """Every declared setting of ``cls`` (and of the setting groups it holds) from ``env``."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "env" in meta:
            values[f.name] = _parse(meta, f.default, env.get(meta["env"]))
        elif dataclasses.is_dataclass(f.default):
            values[f.name] = type(f.default)(**_read(type(f.default), env))
    return values


def _parse(meta: Mapping[str, Any], default: Any, raw: str | None) -> Any:
    name = meta["env"]
    if raw is None or raw == "":
        return default
    kind = type(default)
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    if isinstance(default, Path) or default is None:
        return Path(raw)
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
        if value != value:
            raise ConfigError(f"{name} must be a number, got {raw!r}")
        if meta["low"] is not None and value < meta["low"]:
            raise ConfigError(f"{name} must be >= {meta['low']}, got {raw}")
        if meta["high"] is not None and value > meta["high"]:
            raise ConfigError(f"{name} must be <= {meta['high']}, got {raw}")
        return value
    choices = meta["choices"]
    if choices:
        value = raw.strip()
        match = next((c for c in choices if c.lower() == value.lower()), None)
        if match is None:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return match
    return raw
