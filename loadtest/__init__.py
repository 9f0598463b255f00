"""Locust load profiles for the gateway, and the tools to run them."""
