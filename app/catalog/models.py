"""What the gateway can serve: public models, the upstream targets behind each (with their timeouts
and parameter policies), read from the models file (``models.toml`` beside this module by default).

``load_models(path, env)`` takes the environment as a mapping (for the targets' API keys) and never
reads ``os.environ`` itself.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.toml")

PROVIDER_NAMES = ("openai", "gemini")
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
