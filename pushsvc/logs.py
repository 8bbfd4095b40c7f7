"""Logging helpers: credentials never reach the logs, and the event loop never waits on a
log write.

EventSource and browser WebSockets force tokens into query strings, and uvicorn's access
log prints the query string; ``RedactCredentials`` rewrites ``token=…`` (and
``api_key=…``) to ``token=REDACTED`` in every record that passes through the loggers it
is attached to. A line that names no such parameter (the case-insensitive substring
test is a C loop) costs no regular expression.

``hand_off`` puts a queue between the loggers that a busy server writes (the access log
when it is on, connection logs) and their handlers: the loop only appends the record to
a queue, and a thread formats it, redacts it once more and writes it, so a slow terminal
or a full pipe never blocks the loop (``logging.handlers.QueueHandler`` and a thread that
writes in batches).
"""

from __future__ import annotations

import atexit
import logging
import queue
import re
import threading
import time
from collections.abc import Mapping
from logging.handlers import QueueHandler
from typing import Any

_SECRET_PARAM = re.compile(r"(?i)\b(token|api_key|access_token)=[^&\s\"']+")
_MARKERS = ("token=", "api_key=")  # "access_token=" contains "token="


def _names_credential(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _MARKERS)


def redact(text: str) -> str:
    if not _names_credential(text):
        return text
    return _SECRET_PARAM.sub(r"\1=REDACTED", text)


class RedactCredentials(logging.Filter):
    """A record whose message or string arguments name a credential parameter is
    formatted and redacted whole (``token=%s`` with the token as its argument included);
    any other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        values = args.values() if isinstance(args, Mapping) else (args or ())
        if (isinstance(record.msg, str) and _names_credential(record.msg)) or any(
            isinstance(a, str) and _names_credential(a) for a in values
        ):
            try:
                message = record.getMessage()
            except Exception:  # arguments that do not fit: the handler reports it
                return True
            record.msg, record.args = redact(message), None
        return True


_FILTER = RedactCredentials()


def install_redaction(*names: str) -> None:
    for name in names or ("uvicorn.access", "uvicorn.error", "pushsvc"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class _Handoff(QueueHandler):
    """Enqueues the record as it is (``QueueHandler`` would format it here, on the loop):
    the writer thread's handlers format it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


# A woken writer thread sleeps this long before it writes what is queued, so that under
# load it wakes (and takes the GIL from the loop) a few dozen times a second rather than
# once per record: one wake-up per record, on a server pinned to one core, is a context
# switch per request.
BATCH_SECONDS = 0.02
_STOP: Any = object()


class _Writer:
    """Writes the records of one queue with the given handlers, on a thread of its own."""

    def __init__(self, records: queue.SimpleQueue[Any], handlers: list[logging.Handler]):
        self.records = records
        self.handlers = handlers
        self.thread = threading.Thread(target=self._run, name="pushsvc-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        records, handlers = self.records, self.handlers
        while True:
            batch = [records.get()]
            time.sleep(BATCH_SECONDS)
            while not records.empty():
                batch.append(records.get_nowait())
            for record in batch:
                if record is _STOP:
                    return
                for handler in handlers:
                    if record.levelno >= handler.level:
                        try:
                            handler.handle(record)
                        except Exception:  # a broken handler must not stop the thread
                            handler.handleError(record)

    def stop(self) -> None:
        self.records.put(_STOP)
        self.thread.join(timeout=5)


_writers: list[_Writer] = []


def hand_off(*names: str) -> None:
    """Move the handlers of the named loggers (default: uvicorn's two and the root logger)
    behind a queue written by a thread; the redaction filter goes on those handlers too,
    so records propagated from child loggers are redacted as well. Idempotent; the
    threads write what is queued and stop at exit."""
    for name in names or ("uvicorn.access", "uvicorn.error", ""):
        logger = logging.getLogger(name)
        handlers = [h for h in logger.handlers if not isinstance(h, _Handoff)]
        if not handlers:
            continue
        for handler in handlers:
            logger.removeHandler(handler)
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
        records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        logger.addHandler(_Handoff(records))
        if not _writers:
            atexit.register(stop_hand_off)
        _writers.append(_Writer(records, handlers))


def stop_hand_off() -> None:
    """Write what is queued and stop the threads (at exit)."""
    while _writers:
        _writers.pop().stop()
