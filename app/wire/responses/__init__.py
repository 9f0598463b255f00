"""OpenAI's Responses API spoken over the chat pipeline: its request read and turned into a chat
request, a chat completion turned into its response object, and chat chunks into its events."""
