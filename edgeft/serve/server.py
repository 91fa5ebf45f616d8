"""Running the HTTP app with uvicorn: in the foreground (`edgeft serve --http`) or on a thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
import time
from typing import Any

from edgeft.core.errors import EdgeftError
from edgeft.serve.config import HttpOptions

log = logging.getLogger("edgeft.serve")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_host_port(text: str) -> tuple[str, int]:
    """'8080' / ':8080' -> 127.0.0.1:8080; 'HOST:PORT' as given; '[::1]:8080' for IPv6."""
    text = text.strip()
    host, port_text = "127.0.0.1", text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        host = host or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise EdgeftError(f"--http {text!r} is not HOST:PORT", fix="e.g. --http 127.0.0.1:8080") from None
    if not 0 <= port <= 65535:
        raise EdgeftError(f"port {port} is out of range", fix="use a port in 1-65535, e.g. --http 127.0.0.1:8080")
    return host, port


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on host right now (for a server started next: benchmarks, tests, torchrun's master)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to host:port (port 0: a free one), or a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that say so, and without it
    # Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            fix = f"{host} is not an address of this machine: use 127.0.0.1 (this machine) or 0.0.0.0 (every network)"
        elif exc.errno == errno.EACCES and port < 1024:
            fix = "ports below 1024 need root: pick a higher port, e.g. --http 127.0.0.1:8080"
        else:
            fix = "pick another port, e.g. --http 127.0.0.1:8080 (another server may hold this one)"
        raise EdgeftError(f"cannot bind {host}:{port} ({exc.strerror})", fix=fix) from None
    return sock


def read_timeout_protocol(read_timeout_s: float) -> type:
    """uvicorn's h11 protocol with a request read timeout: a client must send its headers and body within
    read_timeout_s of its first byte, or the connection is answered 408 and closed (a slow or half-sent request
    cannot hold a connection open). Time spent waiting for the model does not count."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ReadTimeoutH11Protocol(H11Protocol):
        _read_timer: asyncio.TimerHandle | None = None

        def _reading(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle.response_complete or cycle.more_body

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(read_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # a new request starts: it has read_timeout_s to arrive whole
            super().data_received(data)
            if not self._reading():
                self._disarm()

        def on_response_complete(self) -> None:
            self._disarm()  # uvicorn's keep-alive timeout takes over the idle connection
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._read_timer = None
            if self.transport.is_closing() or not self._reading():
                return
            log.warning("closed a connection that sent no complete request within %.0f s", read_timeout_s)
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                self.transport.write(TIMEOUT_RESPONSE)  # half-sent headers, or a body the app still waits for
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
            self.transport.close()

    return ReadTimeoutH11Protocol


_TIMEOUT_BODY = b'{"error":"timeout","message":"the request did not arrive in time (408)"}'
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _TIMEOUT_BODY
)


def uvicorn_config(app: Any, host: str, port: int, log_level: str, http: HttpOptions | None = None) -> Any:
    """The one uvicorn configuration: keep-alive and read timeouts, header size and connection limits."""
    import uvicorn

    http = http or HttpOptions()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        log_config=None,  # uvicorn's records go through the caller's handlers: one log format for the command
        http=read_timeout_protocol(http.read_timeout_s),
        timeout_keep_alive=int(max(1, http.keep_alive_s)),
        limit_concurrency=http.max_connections,
        h11_max_incomplete_event_size=16 * 1024,
    )


class BackgroundServer:
    """Run an app in a real uvicorn server on a thread (tests, benchmarks); port 0 picks a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = bound_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        state = getattr(getattr(app, "state", None), "serve", None)
        http = state.config.http if state is not None else None
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, log_level, http))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return url_of(self.host, self.port)

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise EdgeftError(
                    "the HTTP server did not start (see the log above)", fix="check the bundle and options"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=15.0)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_http(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Run the app in the foreground until Ctrl-C (uvicorn handles the signal and shuts down gracefully)."""
    import uvicorn

    if host not in LOOPBACK_HOSTS:
        log.warning("binding %s exposes the API to the network; it has no authentication", host)
    sock = bound_socket(host, port)
    state = app.state.serve
    log.info(
        "serving %s (%s) on %s: POST /predict, GET /health, GET /metrics, GET /openapi.json",
        state.predictor.name,
        state.predictor.describe(),
        url_of(host, sock.getsockname()[1]),
    )
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level, state.config.http))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise EdgeftError("the HTTP server did not start (see the log above)", fix="check the bundle and options")
