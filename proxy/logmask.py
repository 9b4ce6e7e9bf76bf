"""Every log line through one masking: nothing shaped like a pkgate secret reaches a log.

``MaskingFormatter`` formats a record as usual (message, arguments, traceback) and then masks
every token-shaped run in the whole line, the same way the access log masks paths
(``proxy.accesslog.mask_tokens``).  ``install`` puts it on every handler of the root logger.
"""

from __future__ import annotations

import logging

from .accesslog import mask_tokens


class MaskingFormatter(logging.Formatter):
    """A formatter whose output never contains a token-shaped string."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_tokens(super().format(record))


def install(fmt: str, root: logging.Logger | None = None) -> None:
    """Give every handler of ``root`` (the root logger by default) a masking formatter."""
    logger = root or logging.getLogger()
    for handler in logger.handlers:
        handler.setFormatter(MaskingFormatter(fmt))


__all__ = ["MaskingFormatter", "install"]
