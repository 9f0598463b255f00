"""Tests of the gateway; they mirror the app package."""
