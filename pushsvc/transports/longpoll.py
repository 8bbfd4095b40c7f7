"""Long-polling: ``GET /v1/poll?channel=…&cursor=…&timeout=…``.

Stateless (DESIGN decision 6): each request carries token, channels and cursor, so any
instance can answer it. The request subscribes like any session (live first, then the
log after the cursor) and answers ``{"events": [...], "cursor": "..."}`` in one write as
soon as something is pending, or with no events at the timeout (default below the common
30 s proxy timeout). One answer holds at most about one history page; the cursor says
where the next poll goes on.

A poll is a whole HTTP request per answer, so its cost is the transport's cost: the
endpoint is a plain ASGI app (no Starlette ``Request``/``Response``, the query string
parsed once by ``query_from``), waits on one future with a timer handle, and watches for
the client's disconnect by driving ``receive`` from callbacks (``DisconnectWatch``)
rather than from a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from starlette.types import Receive, Scope, Send

from pushsvc.exceptions import BadRequest
from pushsvc.protocol import frames
from pushsvc.protocol.ids import StreamId
from pushsvc.protocol.wires import PollWire
from pushsvc.session import Session
from pushsvc.transports.admission import open_request
from pushsvc.transports.asgi import ScopeHeaders, answer_json, query_from, state

log = logging.getLogger("pushsvc.poll")


class PollTransport:
    """The long-poll endpoint as an ASGI app (an instance, so that Starlette's ``Route``
    does not wrap it as a request/response function)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_poll(scope, receive, send)


async def serve_poll(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one poll; errors are answered with problem bodies (as the app's handlers)."""
    await answer_json(_poll, scope, receive, send)


async def _poll(scope: Scope, receive: Receive) -> bytes:
    settings, hub, auth = state(scope)
    query = query_from(scope)
    opening = await open_request(
        settings, hub, auth, ScopeHeaders(scope), query, query.get("cursor")
    )
    timeout = _timeout(
        query.get("timeout"), settings.poll_timeout_default, settings.poll_timeout_max
    )
    if opening.presence and opening.presence_conn is None:
        raise BadRequest(
            "long-poll presence needs presence_id: 8 to 64 characters of A-Z a-z 0-9 _ -, "
            "chosen once by the client and sent with each of its polls"
        )
    session = Session(hub, opening.principal, PollWire())
    session.bounded_replay = True
    hub.register(session)
    if opening.presence_conn is None and None not in opening.positions.values():
        try:
            body = await _from_the_log(session, opening.channels, opening.positions)
        except BaseException:
            session.release()
            raise
        if body is not None:
            session.release()
            return body
    watch = DisconnectWatch(receive, session.close)
    try:
        new = await session.join(opening.channels, opening.positions)
        if opening.presence_conn is not None:
            # one entry per client across its polls, on any instance: each poll renews
            # it, and it expires once the polls stop (``presence_keep``: no leave here)
            session.presence_keep = True
            known = query.get("presence_version")
            await session.join_presence(new, opening.presence_conn, known=known)
        await session.catch_up(new, opening.positions)
        if not session.queue and session.close_code is None:
            await session.wait(timeout)
        version = session.presence_version() if opening.presence_conn is not None else None
        body = _answer(session, version)
    finally:
        watch.stop()
        session.release()
    return body


async def _from_the_log(
    session: Session, channels: list[str], positions: dict[str, StreamId | None]
) -> bytes | None:
    """The answer to a poll whose cursor is behind the log, read from the log alone.

    A client that is behind (its previous answer was a full batch, or events came
    between its polls: the common case under load) gets them at once, so its poll need
    not listen live, nor watch for its disconnect. The log is read first; only when it
    holds nothing after the cursor (``None``) does the poll register live and read
    again (``_poll``: live first, then the log, so that nothing published meanwhile is
    missed). Nothing is lost either way: the answer's cursor is where it stopped."""
    new = session.add_channels(channels)
    for c in new:
        session.seed(c, positions[c])  # type: ignore[arg-type]  # (the caller checked)
    replayed = []
    for c in new:
        if session.batch_full():
            break
        await session.replay_log(c)
        replayed.append(c)
    if not session.queue or session.close_code is not None:
        session.drop_channels(new)  # not answered: the live path subscribes afresh
        return None
    for c in replayed:  # as catch_up counts them: the channels whose replay ran
        session.metrics.resumed(session, c)
    return _answer(session, None)


def _answer(session: Session, presence_version: str | None) -> bytes:
    """The poll's answer: what is queued, and the cursor after it."""
    items = session.drain()
    session.hub.metrics.poll.wrote(items)
    return frames.poll_response(items, session.cursor, presence_version)  # type: ignore[arg-type]


class DisconnectWatch:
    """Calls ``on_disconnect`` when ASGI ``receive`` says ``http.disconnect``, without a
    task: each ``receive()`` coroutine is started by hand and resumed from the done
    callback of the future it waits on (what a Task would do, one object fewer per
    request). A coroutine that yields anything but a future is resumed on the next loop
    turn."""

    __slots__ = ("coro", "on_disconnect", "receive", "waiting")

    def __init__(self, receive: Receive, on_disconnect: Callable[[], object]) -> None:
        self.receive = receive
        self.on_disconnect = on_disconnect
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.waiting: Any = None
        self._step()

    def _step(self, _done: object = None) -> None:
        self.waiting = None
        while self.on_disconnect is not _ignore:
            if self.coro is None:
                self.coro = cast("Coroutine[Any, Any, Any]", self.receive())
            try:
                waiting = self.coro.send(None)
            except StopIteration as stop:
                self.coro = None
                message = stop.value or {}
                if message.get("type") == "http.disconnect":
                    self.on_disconnect()
                    return
                continue  # the request (body) message: read on
            except Exception:
                self.coro = None
                log.debug("receive failed while polling", exc_info=True)
                self.on_disconnect()
                return
            if asyncio.isfuture(waiting):
                # As Task.__step does: the future was yielded to us; resuming the
                # coroutine after it is done requires the flag to be reset.
                waiting._asyncio_future_blocking = False
                self.waiting = waiting
                waiting.add_done_callback(self._step)
            else:
                asyncio.get_running_loop().call_soon(self._step)
                self.waiting = _LOOP_TURN
            return

    def stop(self) -> None:
        """The answer is written (or failed): stop watching; nothing is left waiting."""
        if self.waiting is not None and self.waiting is not _LOOP_TURN:
            self.waiting.remove_done_callback(self._step)
        self.waiting = None
        self.on_disconnect = _ignore
        if self.coro is not None:
            self.coro.close()
            self.coro = None


_LOOP_TURN = object()


def _ignore() -> None:
    pass


def _timeout(raw: str | None, default: float, maximum: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise BadRequest("timeout must be a number of seconds") from exc
    if not 0 <= value <= maximum:
        raise BadRequest(f"timeout must be between 0 and {maximum} seconds")
    return value
