"""Fake upstream registries (real aiohttp servers on loopback) serving packages built by tests."""
