"""The registry-facing side of pkgate: settings, app factory, auth, upstream client, npm and PyPI."""
