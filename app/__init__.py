"""Zowy Gateway: an OpenAI-compatible chat completions API in front of upstream model providers."""
