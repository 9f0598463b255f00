"""Low-balance alerts: which thresholds a balance crossed (rules) and the signed webhooks that tell
the account (delivery: aiohttp's client, whose only other user is the upstream
transport's aiohttp fallback)."""
