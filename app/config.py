"""Settings of one gateway process, read once from the environment and the models file.

Each setting is declared once, as a field with its variable, default and bounds; ``Settings.from_env``
reads them all in one loop. This is the only module that reads ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.toml")

DEFAULT_PERSONA_PROMPT = (
    "You are Zowy AI, the assistant of the Zowy platform. When asked who you are, which model you "
    "are or who made you, answer that you are Zowy AI. Never name or hint at any underlying model, "
    "model family or provider.\n"
    "Ты — Zowy AI, ассистент платформы Zowy. На вопросы о том, кто ты, какая ты модель или кто тебя "
    "создал, отвечай, что ты Zowy AI. Никогда не называй базовые модели, их семейства и поставщиков."
)

PROVIDER_NAMES = ("openai", "gemini")
PARAM_POLICIES = ("pass", "drop", "reject")


class ConfigError(ValueError):
    """The environment or the models file holds something the gateway cannot run with."""


def setting(env: str, default: Any, *, low: float | None = None, high: float | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """Declare a setting: its environment variable, default and bounds, in one place."""
    meta = {"env": env, "low": low, "high": high, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 30.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Condition:
    """When a parameter policy applies: a request field equal to one of these values."""

    field: str
    values: tuple[Any, ...]

    def holds(self, request: Mapping[str, Any]) -> bool:
        return request.get(self.field) in self.values


@dataclass(frozen=True, slots=True)
class ParamPolicy:
    """What a target does with one request parameter: pass it, drop it, or reject a non-default
    value; ``unless`` lists request conditions under which it is passed after all."""

    action: str
    unless: tuple[Condition, ...] = ()

    def for_request(self, request: Mapping[str, Any]) -> str:
        if self.unless and any(c.holds(request) for c in self.unless):
            return "pass"
        return self.action


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream deployment a public model can be served by."""

    name: str
    provider: str
    base_url: str
    model: str
    api_key_env: str
    api_key: str = ""
    max_tokens_field: str = "max_tokens"
    params: Mapping[str, ParamPolicy] = field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = 256

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)


@dataclass(frozen=True, slots=True)
class PublicModel:
    id: str
    created: int
    targets: tuple[Target, ...]
    vision: bool = False
    # What admission reserves for the answer when a request names no max_tokens.
    default_completion_tokens: int = 4096


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
    # Sign-in windows (app/accounts.py:guard): every attempt per account (a ceiling that a right
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
    key_usage_cache_ttl: float = setting("ZOWY_KEY_USAGE_CACHE_TTL", 2.0, low=0)
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
    meter_batch: int = setting("ZOWY_METER_BATCH", 512, low=1)
    meter_interval: float = setting("ZOWY_METER_INTERVAL", 0.05, low=0.001)
    upstream_attempts: int = setting("ZOWY_UPSTREAM_ATTEMPTS", 3, low=1)
    retry_backoff: float = setting("ZOWY_RETRY_BACKOFF", 0.2, low=0)
    breaker_min_requests: int = setting("ZOWY_BREAKER_MIN_REQUESTS", 20, low=1)
    breaker_failure_ratio: float = setting("ZOWY_BREAKER_FAILURE_RATIO", 0.5, low=0.01, high=1)
    breaker_window: float = setting("ZOWY_BREAKER_WINDOW", 30.0, low=1)
    breaker_cooldown: float = setting("ZOWY_BREAKER_COOLDOWN", 30.0, low=0)
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


def load_models(path: Path, env: Mapping[str, str]) -> dict[str, PublicModel]:
    """Parse the models file into public models with their ordered, key-resolved targets."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"models file {path} is not valid TOML: {exc}") from None
    defaults = Timeouts(**doc.get("timeouts", {}))
    targets: dict[str, Target] = {}
    for name, raw in doc.get("targets", {}).items():
        raw = dict(raw)
        provider = raw.pop("provider", "openai")
        if provider not in PROVIDER_NAMES:
            raise ConfigError(f"target {name}: provider must be one of {PROVIDER_NAMES}")
        params = {param: _policy(name, param, spec) for param, spec in raw.pop("params", {}).items()}
        timeouts = replace(defaults, **raw.pop("timeouts", {}))
        key_env = raw.pop("api_key_env", "")
        try:
            targets[name] = Target(
                name=name,
                provider=provider,
                base_url=raw.pop("base_url").rstrip("/"),
                model=raw.pop("model"),
                api_key_env=key_env,
                api_key=env.get(key_env, "") if key_env else "",
                params=params,
                timeouts=timeouts,
                **raw,
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"target {name}: {exc}") from None
    models: dict[str, PublicModel] = {}
    for model_id, raw in doc.get("models", {}).items():
        names = raw.get("targets", [])
        missing = [n for n in names if n not in targets]
        if missing or not names:
            raise ConfigError(f"model {model_id}: unknown or no targets {missing}")
        completion = raw.get("default_completion_tokens", 4096)
        if type(completion) is not int or completion < 1:
            raise ConfigError(f"model {model_id}: default_completion_tokens must be a positive integer")
        models[model_id] = PublicModel(
            id=model_id,
            created=int(raw.get("created", 1735689600)),
            targets=tuple(targets[n] for n in names),
            vision=bool(raw.get("vision", False)),
            default_completion_tokens=completion,
        )
    return models


def _policy(target: str, param: str, spec: Any) -> ParamPolicy:
    """``"drop"``, or ``{ action = "reject", unless = { reasoning_effort = ["none"] } }``."""
    if isinstance(spec, str):
        spec = {"action": spec}
    if not isinstance(spec, dict) or spec.get("action") not in PARAM_POLICIES:
        raise ConfigError(f"target {target}: params.{param} must be one of {PARAM_POLICIES} or a table with 'action'")
    unless = spec.get("unless", {})
    if not isinstance(unless, dict):
        raise ConfigError(f"target {target}: params.{param}.unless must be a table of field = [values]")
    conditions = tuple(
        Condition(field_name, tuple(values if isinstance(values, list) else [values]))
        for field_name, values in unless.items()
    )
    return ParamPolicy(spec["action"], conditions)


def demo_models(models: Mapping[str, PublicModel]) -> dict[str, PublicModel]:
    """Serve every target from the built-in demo model, keeping names and capabilities."""
    return {
        mid: replace(m, targets=tuple(replace(t, base_url="demo:", api_key="demo") for t in m.targets))
        for mid, m in models.items()
    }
