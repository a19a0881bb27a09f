"""Credentials kept out of the HTTP loggers: httpx logs every request URL at INFO (and the
fetcher's direct path writes the same line), so a filter on the ``httpx`` and ``httpcore``
loggers redacts URLs in every record (:func:`mapstream.layers.redact.redact_text`).
"""

from __future__ import annotations

import logging

import httpx

from ..redact import redact_text

__all__ = ["LOGGERS", "RedactingFilter", "install_log_redaction"]

#: The loggers that may see request URLs: httpx's client and its own transport's.
LOGGERS = ("httpx", "httpcore")


class RedactingFilter(logging.Filter):
    """Redacts credentials from URLs in log records (in the arguments and in the message).

    >>> record = logging.LogRecord("httpx", logging.INFO, "", 0, "GET %s", ("http://h/a?key=s3cr3t",), None)
    >>> RedactingFilter().filter(record), "s3cr3t" in record.getMessage()
    (True, False)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                redact_text(str(a)) if isinstance(a, httpx.URL | str) else a for a in args
            )
        if isinstance(record.msg, str) and "://" in record.msg:
            record.msg = redact_text(record.msg)
        return True


def install_log_redaction() -> None:
    """Add a :class:`RedactingFilter` to each of :data:`LOGGERS` (once: idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
