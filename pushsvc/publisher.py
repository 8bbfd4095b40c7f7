"""``Publisher`` and ``SyncPublisher``: publish to pushsvc over HTTP from another service.

    async with Publisher("https://push.example.com", api_key) as publisher:
        event_id = await publisher.publish("orders", {"id": 42}, event="created")

One keep-alive connection pool (httpx) per publisher. Every message carries an
idempotency key (a random one when the caller gives none), so a retry after a lost answer
is stored once and answered the first ID: retrying is always safe. Transient failures
are retried (no answer: connect errors, timeouts, a cut connection; 502, 503, 504; 429
after its ``Retry-After``) with capped exponential backoff and full jitter
(``pushsvc.client._backoff``), at most ``max_attempts`` times and within ``deadline``
seconds in all. Any other error answer is final: it raises the ``PushError`` subclass of
its problem type (``BadRequest``, ``Forbidden``, ``PayloadTooLarge``...) with the rest of
the problem body in ``extra``; no answer at all, after the retries, raises
``BackendError``.

With ``batch_window`` > 0, ``publish`` queues its message and a background batcher sends
what was queued within the window, up to ``max_batch`` messages, as one
``{"messages": [...]}`` request (the queue holds at most ``max_queue`` messages; a
publish waits for room). A batch is all or none on the server, so when one is refused for
good its messages are sent again one by one, and only the bad one fails.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import email.utils
import json
import queue
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, NotRequired, Self, TypedDict, TypeVar

import httpx

from pushsvc.__version__ import __version__
from pushsvc.client._backoff import Backoff
from pushsvc.exceptions import (
    BackendError,
    BadCursor,
    BadRequest,
    ClientError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PushError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)

RETRY_STATUSES = frozenset({429, 502, 503, 504})

# The batcher's queue: messages with the future of their event ID, and markers
F = TypeVar("F")
_Item = tuple[dict[str, Any], F]
_Queued = _Item[F] | str
FLUSH = "flush"  # send what is queued now
STOP = "stop"  # the sync batcher's thread ends
PUBLISH_PATH = "/v1/publish"

_BY_PROBLEM: dict[str, type[PushError]] = {
    cls.problem: cls
    for cls in (
        BadRequest,
        BadCursor,
        Unauthorized,
        Forbidden,
        NotFound,
        PayloadTooLarge,
        TooManyRequests,
        Unavailable,
        BackendError,
    )
}
_BY_STATUS: dict[int, type[PushError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    429: TooManyRequests,
    503: Unavailable,
}


class OutgoingMessage(TypedDict):
    """One message of ``publish_many``: the JSON object of ``POST /v1/publish``, where
    ``data`` may also be ``bytes`` (a binary event)."""

    channel: str
    data: Any
    event: NotRequired[str]
    idempotency_key: NotRequired[str]


def wire_message(
    channel: str, data: Any, event: str | None = None, idempotency_key: str | None = None
) -> dict[str, Any]:
    """A message as ``POST /v1/publish`` takes it, with an idempotency key (a random one
    when none is given) and ``bytes`` as ``data_b64``."""
    body: dict[str, Any] = {"channel": channel}
    if isinstance(data, bytes | bytearray | memoryview):
        body["data_b64"] = base64.b64encode(data).decode()
    else:
        body["data"] = data
    if event is not None:
        body["event"] = event
    body["idempotency_key"] = idempotency_key or secrets.token_urlsafe(18)
    return body


def _from_outgoing(message: Mapping[str, Any]) -> dict[str, Any]:
    return wire_message(
        message["channel"], message["data"], message.get("event"), message.get("idempotency_key")
    )


def error_from(response: httpx.Response) -> PushError:
    """The ``PushError`` an error answer stands for: its problem type's class (else its
    status's), ``detail`` from the body, every other member of the body in ``extra``."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    if not isinstance(body, dict):
        body = {"status": response.status_code, "detail": response.text[:500]}
    problem = str(body.get("type", "")).rpartition("/")[2]
    cls = _BY_PROBLEM.get(problem) or _BY_STATUS.get(response.status_code, PushError)
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "detail")}
    extra["status"] = response.status_code
    detail = str(body.get("detail") or f"HTTP {response.status_code}")
    if cls is TooManyRequests or cls is Unavailable:
        extra.setdefault("retry_after", retry_after(response) or 1.0)
    return cls(detail, **extra)


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), if the answer has one."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Attempts:
    """The retry decisions of one request (no I/O): after a failed attempt, the delay
    before the next one, or ``None`` to give up."""

    def __init__(self, max_attempts: int, deadline: float, backoff: Backoff) -> None:
        self.max_attempts = max_attempts
        self.ends_at = time.monotonic() + deadline
        self.backoff = backoff
        self.made = 0

    def remaining(self) -> float:
        return max(0.0, self.ends_at - time.monotonic())

    def failed(self, retry_after: float | None = None) -> float | None:
        self.made += 1
        if self.made >= self.max_attempts:
            return None
        delay = self.backoff.next_delay() if retry_after is None else retry_after
        if delay >= self.remaining():
            return None
        return delay


class _Base:
    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float,
        deadline: float,
        max_attempts: int,
        backoff_base: float,
        backoff_cap: float,
        batch_window: float,
        max_batch: int,
        max_queue: int,
    ) -> None:
        if max_attempts < 1 or max_batch < 1 or max_queue < 1:
            raise ValueError("max_attempts, max_batch and max_queue must be at least 1")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.batch_window = batch_window
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "User-Agent": f"pushsvc-publisher/{__version__}",
        }

    def _attempts(self) -> _Attempts:
        return _Attempts(
            self.max_attempts, self.deadline, Backoff(self.backoff_base, self.backoff_cap)
        )

    @staticmethod
    def _encode(body: Any) -> bytes:
        try:
            return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"data is not JSON-serializable: {exc}") from exc

    def _chunks(self, wires: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return [wires[i : i + self.max_batch] for i in range(0, len(wires), self.max_batch)]

    def _unreachable(self, attempts: _Attempts, exc: Exception) -> BackendError:
        return BackendError(
            f"no answer from {self.url} after {attempts.made} attempts: {exc!r}",
            status=None,
        )


def _ids(answer: Any, count: int) -> list[str]:
    results = answer["results"] if count != 1 or "results" in answer else [answer]
    return [str(r["id"]) for r in results]


class Publisher(_Base):
    """Publish over HTTP from asyncio. Use it as an async context manager (or call
    ``aclose()``)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        deadline: float = 30.0,
        max_attempts: int = 6,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        batch_window: float = 0.0,
        max_batch: int = 100,
        max_queue: int = 10_000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            api_key,
            timeout=timeout,
            deadline=deadline,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            batch_window=batch_window,
            max_batch=max_batch,
            max_queue=max_queue,
        )
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._queue: asyncio.Queue[_Queued[asyncio.Future[str]]] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish one message; its event ID (``data``: any JSON value, or ``bytes``)."""
        if self._closed:
            raise RuntimeError("publisher closed")
        wire = wire_message(channel, data, event, idempotency_key)
        if self.batch_window <= 0:
            return (await self._post([wire], single=True))[0]
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_queue)
            self._batcher = asyncio.create_task(self._run_batcher(self._queue))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self._queue.put((wire, future))
        return await future

    async def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[str]:
        """Publish in batches of ``max_batch`` (each batch all or none); the event IDs."""
        if self._closed:
            raise RuntimeError("publisher closed")
        ids: list[str] = []
        for chunk in self._chunks([_from_outgoing(m) for m in messages]):
            ids += await self._post(chunk)
        return ids

    async def flush(self) -> None:
        """Send what is queued now (without waiting for the batch window) and wait until
        every queued message is sent or has failed."""
        if self._queue is not None:
            await self._queue.put(FLUSH)
            await self._queue.join()

    async def aclose(self) -> None:
        """Send what is queued, then close the connections."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            if self._batcher is not None:
                self._batcher.cancel()
                await asyncio.gather(self._batcher, return_exceptions=True)
            await self._http.aclose()

    async def _post(self, wires: list[dict[str, Any]], single: bool = False) -> list[str]:
        content = self._encode(wires[0] if single else {"messages": wires})
        attempts = self._attempts()
        while True:
            try:
                response = await self._http.post(
                    PUBLISH_PATH,
                    content=content,
                    timeout=min(self.timeout, max(attempts.remaining(), 0.001)),
                )
            except httpx.TransportError as exc:
                delay = attempts.failed()
                if delay is None:
                    raise self._unreachable(attempts, exc) from exc
            else:
                if response.is_success:
                    return _ids(response.json(), len(wires))
                error = error_from(response)
                if response.status_code not in RETRY_STATUSES:
                    raise error
                delay = attempts.failed(retry_after(response))
                if delay is None:
                    raise error
            await asyncio.sleep(delay)

    async def _run_batcher(self, q: asyncio.Queue[_Queued[asyncio.Future[str]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await q.get()
            if isinstance(first, str):
                q.task_done()
                continue
            batch, markers = [first], 0
            ends_at = loop.time() + self.batch_window
            while len(batch) < self.max_batch:
                if q.empty():
                    wait = ends_at - loop.time()
                    if wait <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(q.get(), wait)
                    except TimeoutError:
                        break
                else:
                    item = q.get_nowait()
                if isinstance(item, str):  # flush: send now
                    markers += 1
                    break
                batch.append(item)
            try:
                await self._send_batch(batch)
            finally:
                for _ in range(len(batch) + markers):
                    q.task_done()

    async def _send_batch(self, batch: list[tuple[dict[str, Any], asyncio.Future[str]]]) -> None:
        try:
            ids = await self._post([wire for wire, _ in batch], single=len(batch) == 1)
        except ClientError as exc:
            if len(batch) == 1 or isinstance(exc, TooManyRequests | Unauthorized):
                _fail(batch, exc)
                return
            for item in batch:  # all or none on the server: find the bad message
                await self._send_batch([item])
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        for (_, future), event_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(event_id)


def _fail(batch: list[tuple[dict[str, Any], Any]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class SyncPublisher(_Base):
    """``Publisher`` for code without an event loop (httpx.Client; the batcher, when
    ``batch_window`` > 0, is a daemon thread). Use it as a context manager (or call
    ``close()``)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        deadline: float = 30.0,
        max_attempts: int = 6,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        batch_window: float = 0.0,
        max_batch: int = 100,
        max_queue: int = 10_000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            url,
            api_key,
            timeout=timeout,
            deadline=deadline,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            batch_window=batch_window,
            max_batch=max_batch,
            max_queue=max_queue,
        )
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._queue: queue.Queue[_Queued[concurrent.futures.Future[str]]]
        self._queue = queue.Queue(max_queue)
        self._batcher: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        if self._closed:
            raise RuntimeError("publisher closed")
        wire = wire_message(channel, data, event, idempotency_key)
        if self.batch_window <= 0:
            return self._post([wire], single=True)[0]
        with self._lock:
            if self._batcher is None:
                self._batcher = threading.Thread(
                    target=self._run_batcher, name="pushsvc-publisher", daemon=True
                )
                self._batcher.start()
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._queue.put((wire, future))
        return future.result()

    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[str]:
        if self._closed:
            raise RuntimeError("publisher closed")
        ids: list[str] = []
        for chunk in self._chunks([_from_outgoing(m) for m in messages]):
            ids += self._post(chunk)
        return ids

    def flush(self) -> None:
        if self._batcher is not None:
            self._queue.put(FLUSH)
            self._queue.join()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            if self._batcher is not None:
                self._queue.put(STOP)
                self._batcher.join()
            self._http.close()

    def _post(self, wires: list[dict[str, Any]], single: bool = False) -> list[str]:
        content = self._encode(wires[0] if single else {"messages": wires})
        attempts = self._attempts()
        while True:
            try:
                response = self._http.post(
                    PUBLISH_PATH,
                    content=content,
                    timeout=min(self.timeout, max(attempts.remaining(), 0.001)),
                )
            except httpx.TransportError as exc:
                delay = attempts.failed()
                if delay is None:
                    raise self._unreachable(attempts, exc) from exc
            else:
                if response.is_success:
                    return _ids(response.json(), len(wires))
                error = error_from(response)
                if response.status_code not in RETRY_STATUSES:
                    raise error
                delay = attempts.failed(retry_after(response))
                if delay is None:
                    raise error
            time.sleep(delay)

    def _run_batcher(self) -> None:
        q = self._queue
        while True:
            first = q.get()
            if isinstance(first, str):
                q.task_done()
                if first == STOP:
                    return
                continue
            batch: list[_Item[concurrent.futures.Future[str]]] = [first]
            marker: str | None = None
            ends_at = time.monotonic() + self.batch_window
            while len(batch) < self.max_batch:
                try:
                    item = q.get(timeout=max(0.0, ends_at - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(item, str):  # flush or stop: send now
                    marker = item
                    break
                batch.append(item)
            try:
                self._send_batch(batch)
            finally:
                for _ in range(len(batch) + (marker is not None)):
                    q.task_done()
            if marker == STOP:
                return

    def _send_batch(
        self, batch: list[tuple[dict[str, Any], concurrent.futures.Future[str]]]
    ) -> None:
        try:
            ids = self._post([wire for wire, _ in batch], single=len(batch) == 1)
        except ClientError as exc:
            if len(batch) == 1 or isinstance(exc, TooManyRequests | Unauthorized):
                _fail(batch, exc)
                return
            for item in batch:  # all or none on the server: find the bad message
                self._send_batch([item])
            return
        except Exception as exc:
            _fail(batch, exc)
            return
        for (_, future), event_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(event_id)


__all__ = [
    "OutgoingMessage",
    "Publisher",
    "SyncPublisher",
    "error_from",
    "retry_after",
    "wire_message",
]
