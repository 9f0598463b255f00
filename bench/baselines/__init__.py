"""Reference systems the gateway is measured against."""
