"""The model providers behind the public models: the client that dispatches, retries and falls
back over a transport, the providers' wire differences, the breaker, and the in-process doubles."""
