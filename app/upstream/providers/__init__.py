"""The upstream providers, one module each: how a request is sent to it and how its answers differ
from OpenAI's."""
