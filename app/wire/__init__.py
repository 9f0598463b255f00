"""What crosses the wire, pure: request schemas, answers and streams of each API the gateway speaks."""
