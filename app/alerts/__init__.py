"""Low-balance alerts: which thresholds a balance crossed (rules) and the signed webhooks that tell
the account (delivery, the one other user of aiohttp besides the upstream transport)."""
