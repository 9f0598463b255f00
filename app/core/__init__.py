"""What every part of the gateway stands on: settings, errors, ids, logs, metrics, caches, the
hashing of secrets and the signing of webhooks. Imports nothing of the gateway but the catalog."""
