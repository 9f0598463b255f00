"""``POST /v1/messages/count_tokens``: an estimate of the input tokens a Messages request costs, made
without calling a model: about four characters a token for the text (the guard prompt the gateway
adds included, as it is billed), the tool definitions as sent, a few tokens of framing per message,
and what an image is reserved at per image."""
from __future__ import annotations

import orjson

from ..chat import RequestFacts
from ..usage import estimate_tokens

PER_MESSAGE = 3


def count_tokens(chat: dict, facts: RequestFacts, guard_chars: int, image_tokens: int) -> int:
    """The estimated input tokens of the chat request a Messages request became."""
    chars = facts.text_chars + guard_chars
    tools = chat.get("tools")
    if tools:
        chars += len(orjson.dumps(tools))
    messages = len(chat["messages"]) + 1  # the guard message
    return estimate_tokens(chars) + PER_MESSAGE * messages + facts.images * image_tokens
