"""Settings of one gateway process, read once from the environment and the models file.

This is the only module that reads ``os.environ``; everything else receives a frozen ``Settings``.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.toml")

DEFAULT_IDENTITY_PROMPT = (
    "You are Zowy AI, the assistant of the Zowy platform. When asked who you are, which model you "
    "are or who made you, answer that you are Zowy AI. Never name or hint at any underlying model, "
    "model family or provider.\n"
    "Ты — Zowy AI, ассистент платформы Zowy. На вопросы о том, кто ты, какая ты модель или кто тебя "
    "создал, отвечай, что ты Zowy AI. Никогда не называй базовые модели, их семейства и поставщиков."
)

PROVIDERS = ("openai", "gemini")
PARAM_POLICIES = ("pass", "drop", "reject")


class ConfigError(ValueError):
    """The environment or the models file holds something the gateway cannot run with."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 30.0
    total: float = 600.0


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
    params: Mapping[str, str] = field(default_factory=dict)
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


@dataclass(frozen=True, slots=True)
class RateLimits:
    per_minute: int = 60
    per_hour: int = 1000


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one chat request may hold, beyond the body size."""

    messages: int = 2048
    text_chars: int = 2_000_000
    tools: int = 128
    image_url_bytes: int = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    data_dir: Path = Path("var")
    sqlite_path: Path = Path("var/zowy.db")
    mongo_url: str = ""
    mongo_db: str = "zowy"
    store_timeout: float = 2.0
    models_file: Path = DEFAULT_MODELS_FILE
    models: Mapping[str, PublicModel] = field(default_factory=dict)
    identity_prompt: str = DEFAULT_IDENTITY_PROMPT
    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 8192
    body_timeout: float = 30.0
    request_limits: RequestLimits = RequestLimits()
    admin_token: str = ""
    key_pepper: str = ""
    key_cache_ttl: float = 5.0
    balance_cache_ttl: float = 1.0
    rate_limits: RateLimits = RateLimits()
    limiter_timeout: float = 0.5
    limiter_fail_open: bool = False
    plans: Mapping[str, int] = field(default_factory=lambda: {"pro": 2_000_000, "business": 10_000_000})
    package_days: int = 30
    meter_batch: int = 512
    meter_interval: float = 0.05
    upstream_attempts: int = 3
    retry_backoff: float = 0.2
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    drain_timeout: float = 30.0
    demo: bool = False
    demo_upstream_port: int = 8099
    log_level: str = "INFO"
    log_format: str = "json"
    access_log: bool = True
    metrics: str = "admin"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def store_url(self) -> str:
        return self.mongo_url or f"sqlite:///{self.sqlite_path}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``ZOWY_*`` variables (``os.environ`` when none given)."""
        env = os.environ if environ is None else environ
        get = env.get
        data_dir = Path(get("ZOWY_DATA_DIR", "var"))
        models_file = Path(get("ZOWY_MODELS_FILE") or DEFAULT_MODELS_FILE)
        models = load_models(models_file, env)
        demo_mode = get("ZOWY_DEMO", "auto").lower()
        if demo_mode not in ("auto", "on", "off"):
            raise ConfigError("ZOWY_DEMO must be auto, on or off")
        any_key = any(t.enabled for m in models.values() for t in m.targets)
        demo = demo_mode == "on" or (demo_mode == "auto" and not any_key)
        demo_port = _int(get, "ZOWY_DEMO_UPSTREAM_PORT", 8099)
        if demo:
            models = demo_models(models, f"http://127.0.0.1:{demo_port}/v1")
        return cls(
            host=get("ZOWY_HOST", "127.0.0.1"),
            port=_int(get, "ZOWY_PORT", 8000),
            workers=_int(get, "ZOWY_WORKERS", 1, low=1),
            data_dir=data_dir,
            sqlite_path=Path(get("ZOWY_SQLITE_PATH") or data_dir / "zowy.db"),
            mongo_url=get("ZOWY_MONGO_URL", ""),
            mongo_db=get("ZOWY_MONGO_DB", "zowy"),
            store_timeout=_float(get, "ZOWY_STORE_TIMEOUT", 2.0),
            models_file=models_file,
            models=models,
            identity_prompt=get("ZOWY_IDENTITY_PROMPT") or DEFAULT_IDENTITY_PROMPT,
            max_body_bytes=_int(get, "ZOWY_MAX_BODY_BYTES", 16 * 1024 * 1024, low=1024),
            max_header_bytes=min(_int(get, "ZOWY_MAX_HEADER_BYTES", 8192, low=1024), 16384),
            body_timeout=_float(get, "ZOWY_BODY_TIMEOUT", 30.0),
            request_limits=RequestLimits(
                messages=_int(get, "ZOWY_MAX_MESSAGES", 2048, low=1),
                text_chars=_int(get, "ZOWY_MAX_TEXT_CHARS", 2_000_000, low=1),
                tools=_int(get, "ZOWY_MAX_TOOLS", 128, low=0),
                image_url_bytes=_int(get, "ZOWY_MAX_IMAGE_URL_BYTES", 10 * 1024 * 1024, low=1024),
            ),
            admin_token=get("ZOWY_ADMIN_TOKEN", ""),
            key_pepper=get("ZOWY_KEY_PEPPER", ""),
            key_cache_ttl=_float(get, "ZOWY_KEY_CACHE_TTL", 5.0),
            balance_cache_ttl=_float(get, "ZOWY_BALANCE_CACHE_TTL", 1.0),
            rate_limits=RateLimits(
                per_minute=_int(get, "ZOWY_RATE_LIMIT_PER_MINUTE", 60, low=1),
                per_hour=_int(get, "ZOWY_RATE_LIMIT_PER_HOUR", 1000, low=1),
            ),
            limiter_timeout=_float(get, "ZOWY_LIMITER_TIMEOUT", 0.5),
            limiter_fail_open=_bool(get, "ZOWY_LIMITER_FAIL_OPEN", False),
            plans={
                "pro": _int(get, "ZOWY_PLAN_PRO_TOKENS", 2_000_000, low=1),
                "business": _int(get, "ZOWY_PLAN_BUSINESS_TOKENS", 10_000_000, low=1),
            },
            package_days=_int(get, "ZOWY_PACKAGE_DAYS", 30, low=1),
            meter_batch=_int(get, "ZOWY_METER_BATCH", 512, low=1),
            meter_interval=_float(get, "ZOWY_METER_INTERVAL", 0.05),
            upstream_attempts=_int(get, "ZOWY_UPSTREAM_ATTEMPTS", 3, low=1),
            retry_backoff=_float(get, "ZOWY_RETRY_BACKOFF", 0.2),
            breaker_threshold=_int(get, "ZOWY_BREAKER_THRESHOLD", 5, low=1),
            breaker_cooldown=_float(get, "ZOWY_BREAKER_COOLDOWN", 30.0),
            drain_timeout=_float(get, "ZOWY_DRAIN_TIMEOUT", 30.0),
            demo=demo,
            demo_upstream_port=demo_port,
            log_level=get("ZOWY_LOG_LEVEL", "INFO").upper(),
            log_format=_choice(get, "ZOWY_LOG_FORMAT", ("json", "text"), "json"),
            access_log=_bool(get, "ZOWY_ACCESS_LOG", True),
            metrics=_choice(get, "ZOWY_METRICS", ("admin", "public", "off"), "admin"),
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


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
        if provider not in PROVIDERS:
            raise ConfigError(f"target {name}: provider must be one of {PROVIDERS}")
        params = raw.pop("params", {})
        bad = {k: v for k, v in params.items() if v not in PARAM_POLICIES}
        if bad:
            raise ConfigError(f"target {name}: params policies must be one of {PARAM_POLICIES}: {bad}")
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
        models[model_id] = PublicModel(
            id=model_id,
            created=int(raw.get("created", 1735689600)),
            targets=tuple(targets[n] for n in names),
            vision=bool(raw.get("vision", False)),
        )
    return models


def demo_models(models: Mapping[str, PublicModel], base_url: str) -> dict[str, PublicModel]:
    """Point every target at the bundled fake upstream, keeping names and capabilities."""
    return {
        mid: replace(m, targets=tuple(replace(t, base_url=base_url, api_key="demo") for t in m.targets))
        for mid, m in models.items()
    }


def _int(get, name: str, default: int, low: int | None = None) -> int:
    raw = get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    return value


def _float(get, name: str, default: float) -> float:
    raw = get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {raw!r}")
    return value


def _choice(get, name: str, choices: tuple[str, ...], default: str) -> str:
    value = (get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool(get, name: str, default: bool) -> bool:
    raw = get(name)
    if raw in (None, ""):
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
