"""Running the HTTP app with uvicorn: in the foreground (`edgeft serve --http`) or on a thread (tests, benchmarks)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from edgeft.core.errors import EdgeftError

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
        raise EdgeftError(
            f"cannot bind {host}:{port} ({exc.strerror})", fix="pick another port, e.g. --http 127.0.0.1:8080"
        ) from None
    return sock


class BackgroundServer:
    """Run an app in a real uvicorn server on a thread (tests, benchmarks); port 0 picks a free port."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.sock = bound_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level, lifespan="on")
        self.server = uvicorn.Server(config)
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
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise EdgeftError("the HTTP server did not start (see the log above)", fix="check the bundle and options")
