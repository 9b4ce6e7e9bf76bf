"""Identities and tokens: format, store, validation cache, last-used, mail and the token APIs."""
