"""gunicorn's gthread worker, guarded against clients that send slowly or are refused early.

Devices talk to chargewatch without a proxy in front, so the worker does what a proxy would:

- **A request gets a thread only once it has arrived.** The worker's event loop reads the request
  headers and up to ``PREBUFFER_BYTES`` of its body without blocking (devices post a few hundred
  bytes); only then is the connection handed to a thread, with those bytes given to gunicorn's
  parser. A client that stalls half way holds a socket, never one of the few threads.
- **A request must arrive within ``request_timeout_seconds``** (headers and body, counted from the
  connection's opening, or for a kept-alive connection from the next request's first byte). Past
  that the connection is answered 408 and closed; a body still being read by a thread (past the
  pre-buffer) is cut off by shutting the socket's read side, which the route answers with 408.
- **An error answered before the body was read closes the connection** (``Connection: close``),
  instead of draining a body the service never wanted; the lingering close that lets the client
  read the answer (RFC 9112 section 9.6) runs in the event loop, not in a thread or blocking it.
- **gunicorn's own errors** (request line or headers over the limits, malformed requests) are
  answered in chargewatch's JSON error shape instead of gunicorn's HTML page.
- **Workers take connections in turn.** A worker holding more connections than another (counts in
  a :class:`~webapi.connection_share.ConnectionShare`) leaves a waiting connection to that one, and
  takes it itself only if it is still waiting after ``ACCEPT_PATIENCE_SECONDS`` (the other worker
  may be stopped or stuck). Without this, a gateway's few kept-alive connections often all land on
  one worker while the other idles.

This leans on gunicorn's gthread internals (``enqueue_req``, ``accept``, ``TConn``), so gunicorn is
pinned to the version it was written against.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http.body import LengthReader
from gunicorn.http.wsgi import Response as GunicornResponse
from gunicorn.workers import gthread

from webapi.connection_share import ConnectionShare, WorkerSlot

PREBUFFER_BYTES = 64 * 1024
# How long a connection waits for a worker holding fewer connections before a busier one takes it,
# and how often the busier one looks again meanwhile.
ACCEPT_PATIENCE_SECONDS = 0.05
_ACCEPT_RECHECK_SECONDS = 0.002
# Larger headers than this are gunicorn's to refuse (100 fields of 8190 bytes are far over it).
_MAX_HEADER_BYTES = 64 * 1024
_LINGER_SECONDS = 2.0
_LINGER_MAX_BYTES = 64 * 1024


class _GuardedConn(gthread.TConn):
    """A connection whose graceful close is handed to the worker's event loop."""

    def __init__(self, *args: Any, linger: Callable[[socket.socket], None]) -> None:
        super().__init__(*args)
        self.linger = linger
        self.arrival: bytearray | None = None  # bytes read ahead of the parser, while arriving
        self.deadline: float | None = None  # when the request being read must have arrived

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.linger(self.sock)
        else:
            super().close()


def _request_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole request head and its body (or the first PREBUFFER_BYTES).

    Judges only when to hand the connection to a thread; gunicorn's parser still reads and checks
    every byte, so a head this cannot make sense of is handed over at once, for gunicorn to refuse.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return len(data) >= _MAX_HEADER_BYTES or data.find(b"\n\n") >= 0
    body = len(data) - head_end - 4
    length = 0
    for line in bytes(data[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"expect" or name == b"transfer-encoding":
            # 100-continue: the client waits for the go-ahead gunicorn sends when the body is read.
            # Chunked bodies have no length to wait for.
            return True
        if name == b"content-length":
            if not value.isdigit():
                return True
            length = int(value)
    return body >= min(length, PREBUFFER_BYTES)


class GuardedThreadWorker(gthread.ThreadWorker):
    """gthread with the guards above; ``request_timeout_seconds`` is set by :func:`worker_class`."""

    request_timeout_seconds = 10.0
    connection_share: ConnectionShare | None = None
    wsgi: Any  # the app gunicorn calls (set by load_wsgi; gunicorn is untyped)
    application: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self).connection_share is None:
            # gunicorn's arbiter builds each worker object before it forks that worker: the first
            # one creates the share every later worker inherits.
            type(self).connection_share = ConnectionShare()
        self._arriving: set[_GuardedConn] = set()
        self._lingering: dict[socket.socket, list] = {}  # socket -> [deadline, bytes drained]
        self._reading: dict[int, _GuardedConn] = {}  # thread id -> connection it is reading
        self._reading_lock = threading.Lock()
        self._slot: WorkerSlot | None = None  # this worker's place in the connection share
        self._yielding_since: float | None = None  # since when a waiting connection is left to others
        self._look_again_at = 0.0

    def run(self) -> None:
        # Counted from when the event loop starts: a booting worker would be "holding fewer" while it
        # cannot accept yet.
        assert self.connection_share is not None  # made in __init__
        self._slot = self.connection_share.claim(os.getpid())
        super().run()

    # -- accepting and arriving (event loop) ---------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        if self._holds_more_than_another():
            self._yielding_since = time.monotonic()
            self._look_again_at = self._yielding_since + _ACCEPT_RECHECK_SECONDS
            self.set_accept_enabled(False)
            return
        self._take_connection(listener)

    def _holds_more_than_another(self) -> bool:
        return self._slot is not None and self._slot.holds_more_than_another(self.nr_conns)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn's loop enables accepting whenever a worker is under its connection limit; while
        # this worker yields, it stays off until _look_again decides.
        super().set_accept_enabled(enabled and self._yielding_since is None)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if self._slot is not None:
            self._slot.publish(self.nr_conns)
        if self._yielding_since is not None:
            now = time.monotonic()
            if now >= self._look_again_at:
                self._look_again(now)
            if self._yielding_since is not None:
                timeout = min(timeout, max(0.0, self._look_again_at - now))
        super().wait_for_and_dispatch_events(timeout)

    def _look_again(self, now: float) -> None:
        """While yielding: go on yielding, or take what still waits (the others had their chance)."""
        assert self._yielding_since is not None
        if self._holds_more_than_another() and now - self._yielding_since < ACCEPT_PATIENCE_SECONDS:
            self._look_again_at = now + _ACCEPT_RECHECK_SECONDS
            return
        self._yielding_since = None
        if self.nr_conns < self.worker_connections:
            for listener in self.sockets:
                self._take_connection(listener)  # nothing happens if another worker took it
        self.set_accept_enabled(self.nr_conns < self.worker_connections)  # as gunicorn's loop would

    def _take_connection(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if self._slot is not None:
            self._slot.publish(self.nr_conns)  # before this or another worker's next accept looks
        conn = _GuardedConn(self.cfg, client_sock, client_addr, listener.getsockname(), linger=self._linger)
        self.enqueue_req(conn)

    def enqueue_req(self, conn: _GuardedConn) -> None:
        if conn.parser is not None and conn.parser.unreader.buf.getvalue():
            super().enqueue_req(conn)  # the next request is read ahead already: gunicorn's case
            return
        conn.sock.setblocking(False)
        conn.arrival = bytearray()
        conn.deadline = time.monotonic() + self.request_timeout_seconds
        self._arriving.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_arriving_readable, conn))
        self._on_arriving_readable(conn, conn.sock)  # a keep-alive request may be here already

    def _on_arriving_readable(self, conn: _GuardedConn, _client: Any) -> None:
        assert conn.arrival is not None
        try:
            data = conn.sock.recv(max(4096, PREBUFFER_BYTES + _MAX_HEADER_BYTES - len(conn.arrival)))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._stop_arriving(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.arrival += data
        if _request_complete(conn.arrival):
            self._stop_arriving(conn)
            conn.data_ready = True
            super().enqueue_req(conn)

    def _stop_arriving(self, conn: _GuardedConn) -> None:
        self._arriving.discard(conn)
        self.poller.unregister(conn.sock)

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        now = time.monotonic()
        for conn in [c for c in self._arriving if force or (c.deadline is not None and c.deadline <= now)]:
            self._stop_arriving(conn)
            self.nr_conns -= 1
            if conn.arrival and not force:  # a connection that never said anything just closes
                self._answer_timeout(conn.sock)
                conn.close(graceful=True)  # the client may still be sending: let it read the 408
            else:
                conn.close()
        with self._reading_lock:
            late = [c for c in self._reading.values() if c.deadline is not None and c.deadline <= now]
        for conn in late:
            try:
                conn.sock.shutdown(socket.SHUT_RD)  # the thread's blocked read returns; the route answers 408
            except OSError:
                pass
            conn.deadline = None
        for sock, (deadline, _) in list(self._lingering.items()):
            if force or deadline <= now:
                self._end_linger(sock)

    def _answer_timeout(self, sock: socket.socket) -> None:
        body = json.dumps({"error": "request_timeout", "message": "the request did not arrive within "
                           f"{self.request_timeout_seconds:g} s", "details": []}).encode()
        self._write_json(sock, 408, "Request Timeout", body)

    @staticmethod
    def _write_json(sock: socket.socket, status: int, reason: str, body: bytes) -> None:
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            util.write_nonblock(sock, head + body)
        except OSError:
            pass

    # -- lingering close (event loop) ----------------------------------------------------------

    def _linger(self, sock: socket.socket) -> None:
        """Send FIN now; read and discard what the client still sends for a while, then close."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._on_lingering_readable, sock))
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._lingering[sock] = [time.monotonic() + _LINGER_SECONDS, 0]

    def _on_lingering_readable(self, sock: socket.socket, _client: Any) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        state = self._lingering[sock]
        state[1] += len(data)
        if not data or state[1] > _LINGER_MAX_BYTES:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError):
            pass
        util.close(sock)

    # -- in a thread -----------------------------------------------------------------------------

    def handle(self, conn: _GuardedConn) -> Any:
        arrived, conn.arrival = conn.arrival, None
        if arrived:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(arrived))
        if conn.deadline is None:
            conn.deadline = time.monotonic() + self.request_timeout_seconds
        ident = threading.get_ident()
        with self._reading_lock:
            self._reading[ident] = conn
        try:
            return super().handle(conn)
        finally:
            with self._reading_lock:
                self._reading.pop(ident, None)
            conn.deadline = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.application = self.wsgi  # the Flask app itself, for hooks that need its extensions
        self.wsgi = _close_after_early_errors(self.wsgi)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """gunicorn's status and message for its own errors, in chargewatch's JSON shape."""
        page = _CapturedSocket()
        super().handle_error(req, page, addr, exc)
        status_line = page.data.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            _, code, reason = status_line.split(" ", 2)
            status = int(code)
        except ValueError:
            status, reason = 500, "Internal Server Error"
        message = str(exc) if status < 500 else "an unexpected error occurred; it has been logged"
        error = "internal_error" if status >= 500 else reason.lower().replace(" ", "_")
        body = json.dumps({"error": error, "message": message or reason, "details": []}).encode()
        self._write_json(client, status, reason, body)


class _CapturedSocket:
    """Stands in for the client socket while gunicorn writes its error page, to learn its status."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.data += data


def _close_after_early_errors(app: Callable) -> Callable:
    """WSGI wrapper: an error status while the request body is not read in full closes the
    connection after the response, rather than keep it (and drain a body nobody wants)."""

    def guarded(environ: dict, start_response: Callable) -> Any:
        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            owner = getattr(start_response, "__self__", None)
            early = status[:1] in "45" and not _body_read(environ)
            if isinstance(owner, GunicornResponse) and (early or status.startswith("408")):
                owner.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return guarded


def _body_read(environ: dict) -> bool:
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    return isinstance(reader, LengthReader) and reader.length == 0


def worker_class(request_timeout_seconds: float) -> type[GuardedThreadWorker]:
    """The worker class for gunicorn's ``worker_class`` setting, with this request timeout."""
    return type("GuardedThreadWorker", (GuardedThreadWorker,), {"request_timeout_seconds": request_timeout_seconds})
