"""Domain errors raised by the store and the token services; the HTTP layer maps them to answers."""

from __future__ import annotations


class PkgateError(Exception):
    """Base of every domain error."""


class NotFound(PkgateError):
    """The record does not exist (or is not the caller's)."""


class Conflict(PkgateError):
    """The change contradicts what is stored (e.g. a duplicate)."""


class StoreUnavailable(PkgateError):
    """The database cannot be written or read right now (read-only, full, locked too long)."""


class InvalidInput(PkgateError):
    """A value given by a caller is not acceptable; the message is safe to show."""
