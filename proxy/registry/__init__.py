"""The machinery both registries share: upstream client, metadata cache, artifact store, policy."""
