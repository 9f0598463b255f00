"""What crosses the wire, pure: request schemas and their validation, SSE framing, usage as
upstreams report it, the rewriting of upstream answers, the persona, page cursors."""
