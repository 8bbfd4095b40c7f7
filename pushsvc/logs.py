"""Logging helpers: credentials never reach the logs.

EventSource and browser WebSockets force tokens into query strings, and uvicorn's access
log prints the query string; ``RedactCredentials`` rewrites ``token=…`` (and
``api_key=…``) to ``token=REDACTED`` in every record that passes through the loggers it
is attached to.
"""

from __future__ import annotations

import logging
import re

_SECRET_PARAM = re.compile(r"(?i)\b(token|api_key|access_token)=[^&\s\"']+")


def redact(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1=REDACTED", text)


class RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                redact(a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


_FILTER = RedactCredentials()


def install_redaction(*names: str) -> None:
    for name in names or ("uvicorn.access", "uvicorn.error", "pushsvc"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
