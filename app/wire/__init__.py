"""What crosses the wire, pure: request schemas, answers and stream events of each API dialect."""
