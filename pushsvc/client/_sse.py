"""A sans-I/O parser of ``text/event-stream`` (bytes in, messages out)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEMessage:
    event: str
    data: str
    id: str | None


class SSEParser:
    """Splits a stream into messages per the HTML spec: ``event``/``data``/``id`` fields,
    a blank line dispatches, ``:`` starts a comment. Lines end with LF or CRLF."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None
        self.comments = 0
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        out: list[SSEMessage] = []
        buf = self._buf + chunk
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line.decode("utf-8", "replace"), out)
        self._buf = buf[start:]
        return out

    def _line(self, line: str, out: list[SSEMessage]) -> None:
        if not line:
            if self._data:
                out.append(SSEMessage(self._event or "message", "\n".join(self._data), self._id))
            self._event, self._data, self._id = "", [], None
            return
        if line.startswith(":"):
            self.comments += 1
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
