"""Identities and tokens: format, store, validation cache, last-used recording, mail and the token APIs."""
