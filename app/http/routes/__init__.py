"""HTTP routes, one blueprint per area; each handler is thin: validate, call a service, respond."""
