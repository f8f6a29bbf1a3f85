"""Running the app under uvicorn, with guards at the level of connections.

A slow or stalled client must not hold the server: uvicorn's own limits cover idle keep-alive
connections and the size of a request's head, not a head or a body that arrives a byte at a time,
nor how many connections are open. ``GuardedH11`` is uvicorn's h11 protocol with those added:

* at most ``max_connections`` open at once: one more is answered 503 (Retry-After) and closed at
  once, so a flood of half-open connections cannot use up the process's file descriptors (and the
  event loop accepts at most a quarter of that many at a time, so the ones accepted before they
  are refused fit too; should the system run out all the same, that is one line in the log);
* a request's line and headers must arrive within ``header_timeout_s`` (of the connection opening,
  or of the previous answer on a kept-alive connection): 408 and closed;
* its body within ``body_timeout_s`` of its headers: 408 and closed;
* its answer taken by the client: while bytes written to a connection wait for the client to take
  them (in the transport's buffer, or in the kernel's, not yet acknowledged), it must take, every
  ``send_timeout_s``, what waited at the start of that span or ``MIN_SEND_RATE`` a second of it,
  whichever is less; otherwise the connection is reset at once (what was still to send is dropped,
  in the process and in the kernel). Measured over spans, not from one stall to the next, so a
  client that reads a trickle is cut off too; and by what the client acknowledged, not by what the
  kernel accepted (its send buffer takes megabytes at once, and a client reading well would show no
  progress while it drained them). Without it, a client that never read held its answer (a 106 MB
  annotated PNG) in memory as long as it stayed;
* on SIGTERM or Ctrl-C, an upload still arriving is answered 503 and closed at once, and the
  requests already received have ``shutdown_grace_s`` to be answered before the server stops.

These answers are written straight to the connection (the app never saw the request, or will not
finish reading it). The subclass relies on uvicorn's H11Protocol and RequestResponseCycle attributes
(``cycle``, ``more_body``, ``response_started``, ``response_complete``, ``disconnected``,
``message_event``), stable since uvicorn 0.13, and on both writing through ``self.transport`` (which
``_Counted`` wraps to count what is written). The kernel's unacknowledged bytes are Linux's
``SIOCOUTQ``; where it is missing, the transport's buffer alone is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import resource
import socket
import struct
import termios
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

FD_RESERVE = 100  # file descriptors kept for the process itself: model files, threads, logs...
FDS_PER_CONNECTION = 2  # its socket, and a part of its upload spooled to a temporary file
MIN_SEND_RATE = 64 * 2**10  # bytes a second a client must take of an answer waiting for it (see above)


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    shutdown_grace_s: float = 5.0
    send_timeout_s: float = 30.0


def connection_cap(wanted: int) -> int:
    """``wanted`` connections, or fewer when the open-file limit would not hold them (after raising
    the soft limit to the hard one, as a server may)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, min(wanted, (soft - FD_RESERVE) // FDS_PER_CONNECTION))


def run(application, listening: socket.socket, limits: ConnectionLimits, access_log: bool) -> None:
    """Serve ``application`` on the bound, listening socket until SIGTERM or Ctrl-C."""
    config = uvicorn.Config(
        application,
        http=guarded_protocol(limits),
        access_log=access_log,
        log_level="info",
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(limits.shutdown_grace_s)),
        # asyncio accepts up to `backlog` connections in one go, before any is refused: a quarter
        # of the cap keeps a burst within the file descriptors connection_cap set aside
        backlog=max(8, limits.max_connections // 4),
    )
    server = _Server(config)
    with listening:
        server.run(sockets=[listening])


class _Server(uvicorn.Server):
    async def startup(self, sockets=None) -> None:
        asyncio.get_running_loop().set_exception_handler(_out_of_files_in_one_line)
        await super().startup(sockets)


def _out_of_files_in_one_line(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """asyncio logs a traceback for every accept() that finds no file descriptor left (then stops
    accepting for a second and goes on): say so in one line, once a second; anything else as
    asyncio would."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        if loop.time() - _said["out of files"] >= 1.0:
            _said["out of files"] = loop.time()
            logging.getLogger("uvicorn.error").warning(
                "no file descriptor left to accept a connection: not accepting for a second "
                "(fer serve --max-connections, ulimit -n)"
            )
        return
    loop.default_exception_handler(context)


_said = {"out of files": float("-inf")}  # when each once-a-second line was last said


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    return type("GuardedH11", (GuardedH11,), {"limits": limits})


class GuardedH11(H11Protocol):
    limits: ConnectionLimits = ConnectionLimits()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._owed = self._taken = 0  # bytes waiting for the client, and taken by it, when the span began
        super().connection_made(_Counted(transport, self._wrote))
        if len(self.connections) > self.limits.max_connections:
            self._answer_and_close(
                503,
                f"busy: {self.limits.max_connections} connections open, the most this server keeps "
                "(fer serve --max-connections); try again shortly",
                retry_after=1,
            )
            return
        self._wait_for_head()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        self._follow(before)

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()  # may start a pipelined request
        if not self.transport.is_closing():
            if self.cycle is answered:
                self._wait_for_head()
            else:
                self._follow(answered)

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started and not cycle.response_complete:
            self._answer_and_close(503, "the server is stopping; the upload was not complete", retry_after=5)
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # --- timers -----------------------------------------------------------------------------------

    def _follow(self, before) -> None:
        """After bytes came in: a request whose head has just arrived stops the head's clock and,
        while its body is coming, runs the body's; a body complete stops that."""
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            _cancel(self._header_timer)
            self._header_timer = None
            if cycle.more_body:
                self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late, cycle)
        if self._body_timer is not None and cycle is not None and not cycle.more_body:
            _cancel(self._body_timer)
            self._body_timer = None

    def _wait_for_head(self) -> None:
        _cancel(self._header_timer)
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_late)

    def _head_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self.transport.close()  # not a byte of a request: nothing to answer
            return
        self._answer_and_close(
            408, f"the request's headers took over {self.limits.header_timeout_s:g}s (fer serve --header-timeout)"
        )

    def _body_late(self, cycle) -> None:
        self._body_timer = None
        if self.transport.is_closing() or cycle is not self.cycle or not cycle.more_body:
            return
        if cycle.response_started:  # answered already (413, 503) while the client still sends: done with it
            self.transport.close()
            return
        self._answer_and_close(
            408, f"the request's body took over {self.limits.body_timeout_s:g}s (fer serve --body-timeout)"
        )

    def _wrote(self) -> None:
        """After a write: bytes left waiting for the client start the watch on its taking them."""
        if self._send_timer is None and self.transport.waiting():
            self._watch_sending()

    def _watch_sending(self) -> None:
        self._owed = self.transport.waiting()
        self._taken = self.transport.written - self._owed
        self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_checked)

    def _send_checked(self) -> None:
        """The end of a span: a client that took too little is cut off; one that still has bytes
        waiting starts another span."""
        self._send_timer = None
        left = self.transport.waiting()
        taken = self.transport.written - left - self._taken
        if taken < min(self._owed, MIN_SEND_RATE * self.limits.send_timeout_s):
            self._reset()
        elif left:
            self._watch_sending()

    def _reset(self) -> None:
        """Close the connection at once, dropping what it still had to send: a reset (SO_LINGER 0),
        not a close, whose FIN would wait behind bytes the client does not take, in the kernel's
        buffers, and the client would not hear of it. connection_lost follows: the app hears that
        the client left."""
        with contextlib.suppress(OSError, AttributeError):
            self.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for name in ("_header_timer", "_body_timer", "_send_timer"):
            _cancel(getattr(self, name, None))
            setattr(self, name, None)

    # --- answers the app never gives ----------------------------------------------------------------

    def _answer_and_close(self, status: int, detail: str, retry_after: int | None = None) -> None:
        """Write a whole JSON answer (the app's shape: {"detail": ...}) and close the connection;
        the app, if it was reading this request, hears that the client left."""
        self._cancel_timers()
        body = json.dumps({"detail": detail}).encode()
        head = [
            f"HTTP/1.1 {status} {REASONS[status]}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # its receive() now says so; its answer goes nowhere
            cycle.message_event.set()
        self.transport.close()


REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


class _Counted:
    """A connection's transport that counts the bytes written to it, says when it has written, and
    tells how many of them the client has not yet taken."""

    def __init__(self, transport: asyncio.Transport, wrote):
        self._transport, self._wrote = transport, wrote
        self._socket = transport.get_extra_info("socket")
        self.written = 0

    def waiting(self) -> int:
        """Bytes written and not yet taken: in the transport's buffer, and in the kernel's."""
        return self._transport.get_write_buffer_size() + _unacknowledged(self._socket)

    def write(self, data: bytes) -> None:
        self._transport.write(data)
        self.written += len(data)
        self._wrote()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


_OUTQ = getattr(termios, "TIOCOUTQ", None)  # on a TCP socket, Linux's SIOCOUTQ


def _unacknowledged(sock) -> int:
    """Bytes in the kernel's send queue not yet acknowledged by the client; 0 where unknown."""
    if _OUTQ is None or sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
