"""Anthropic's Messages API spoken over the gateway's chat pipeline: its request schema and the
translation to a chat request, its message object, its stream events, its errors."""
