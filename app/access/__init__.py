"""Who calls and how often: API keys and bearer tokens, the caller's address, rate windows."""
