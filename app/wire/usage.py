"""Usage accounting, pure: ledger entries, token estimates, and how a debit spreads over packages."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

@dataclass(slots=True)
class LedgerEntry:
    """One request that reached an upstream: what it cost and how it ended."""

    request_id: str
    account_id: str
    key_id: str
    model: str
    target: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool
    stream: bool
    outcome: str
    status: int
    latency_ms: float
    user: str | None
    created_at: float
    attempts: int = 1
    debits: list[list] = field(default_factory=list)
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    # The balance reservation this request held, settled when the entry is written; with a capped
    # key, the same tokens reserved on the key's cap through its lease there.
    lease_id: str | None = None
    reserved: int = 0
    key_lease_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LedgerEntry":
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_upstream(cls, raw: object) -> "Usage | None":
        """Read an OpenAI ``usage`` object; None when it is missing or malformed.

        ``total_tokens`` is billed as reported: Gemini counts thinking tokens in it, beyond
        prompt + completion. A total below their sum is taken as their sum.
        """
        if not isinstance(raw, dict):
            return None
        prompt = raw.get("prompt_tokens")
        completion = raw.get("completion_tokens")
        if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
            return None
        total = raw.get("total_tokens")
        if type(total) is not int or total < prompt + completion:
            total = prompt + completion
        return cls(
            prompt, completion, total,
            reasoning_tokens=_detail(raw, "completion_tokens_details", "reasoning_tokens"),
            cached_tokens=_detail(raw, "prompt_tokens_details", "cached_tokens"),
        )


def _detail(raw: dict, group: str, name: str) -> int:
    details = raw.get(group)
    value = details.get(name) if type(details) is dict else None
    return value if type(value) is int and value > 0 else 0


def estimate_tokens(n_chars: int) -> int:
    """Rough token count of text: ~4 characters a token, at least one for anything non-empty,
    never more than the characters themselves."""
    return (n_chars + 3) // 4


def estimate_usage(prompt_bytes: int, completion_tokens: int) -> Usage:
    """Usage when the upstream never reported it: the prompt from its size, the completion as counted."""
    prompt = estimate_tokens(prompt_bytes)
    return Usage(prompt, completion_tokens, prompt + completion_tokens, estimated=True)


@dataclass(frozen=True, slots=True)
class PackageBalance:
    """What the debit rule needs to know of one package."""

    id: str
    remaining: int


def allocate(tokens: int, active: Sequence[PackageBalance], fallback_id: str | None) -> list[list]:
    """Spread ``tokens`` over active packages, oldest first, spilling into the next.

    What no active package can hold is an overdraft on the last active package, or on
    ``fallback_id`` (the account's newest package) when none is active. Returns
    ``[[package_id, tokens], ...]``; empty only when the account has no package at all.
    """
    debits: list[list] = []
    left = tokens
    for package in active:
        if left <= 0:
            break
        take = min(package.remaining, left)
        if take > 0:
            debits.append([package.id, take])
            left -= take
    if left > 0:
        sink = active[-1].id if active else fallback_id
        if sink is None:
            return debits
        if debits and debits[-1][0] == sink:
            debits[-1][1] += left
        else:
            debits.append([sink, left])
    return debits


# What an image may cost in prompt tokens (high detail on the largest upstream tiling), reserved as such.
IMAGE_TOKENS = 1500


def prompt_need(body_bytes: int, image_bytes: int, images: int, guard_bytes: int) -> int:
    """What a request's prompt is expected to cost, reserved before it goes upstream: the request at a
    generous three bytes a token (images at ``IMAGE_TOKENS`` each) and the guard prompt."""
    return (body_bytes - image_bytes + guard_bytes + 2) // 3 + images * IMAGE_TOKENS


def request_need(body_bytes: int, image_bytes: int, images: int, guard_bytes: int, completion: int, choices: int = 1) -> int:
    """The most a request is expected to cost: its prompt (``prompt_need``) and the completion it
    allows (its max_tokens, or the model's default) for every choice."""
    return prompt_need(body_bytes, image_bytes, images, guard_bytes) + completion * max(1, choices)


def lease_size(need: int, free: int, slice_max: int, share: int, floor: int) -> int:
    """How many tokens to lease for a request needing ``need`` when ``free`` are free: 0 when they do
    not cover it; else ``need`` plus a slice for the requests to come, a ``share``-th of what would
    remain, at most ``slice_max`` — and no slice at all once fewer than ``floor`` would remain, so
    near the end of a balance every reservation is exactly a request's own."""
    if need > free:
        return 0
    rest = free - need
    if rest < floor:
        return need
    return need + min(slice_max, rest // share)
