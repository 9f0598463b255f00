"""One request's way through the gateway, free of any HTTP framework: its admission, the chat
pipeline and the exchange that records it; the resources each worker owns; its live traffic."""
