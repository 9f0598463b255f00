"""What the store keeps of a bearer secret (an API key, a session or invite token, a redemption
code): its HMAC-SHA256 under the server's pepper, never the secret itself."""
from __future__ import annotations

import hmac


def key_hash(key: str, pepper: str) -> str:
    return hmac.digest(pepper.encode(), key.encode(), "sha256").hex()
