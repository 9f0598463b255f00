"""What a request may cost, reserved before it goes upstream, and how many tokens a worker leases
for it and the requests to come."""
from __future__ import annotations

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
