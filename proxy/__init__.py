"""Registry-facing side of pkgate: settings, app, auth, upstream client, npm and PyPI."""
