"""A real HTTP server on loopback that serves /metrics bodies a test controls.

Each path serves a body that the test can replace between scrapes; a path can be made
to hang (until a ``threading.Event`` is set) to play a slow target. Port 0: the kernel
picks a free port, so tests running in parallel never collide.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@dataclass
class Route:
    body: str
    status: int = 200
    content_type: str = TEXT
    hang: threading.Event | None = None  # when set: wait for it before answering
    hits: int = 0


@dataclass
class MetricsServer:
    host: str
    port: int
    routes: dict[str, Route] = field(default_factory=dict)

    def url(self, path: str = "/metrics") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def serve(self, path: str, body: str, **kw: object) -> str:
        self.routes[path] = Route(body, **kw)  # type: ignore[arg-type]
        return self.url(path)


@contextmanager
def metrics_server() -> Iterator[MetricsServer]:
    state = MetricsServer("127.0.0.1", 0)
    released: list[threading.Event] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route.hits += 1
            if route.hang is not None:
                released.append(route.hang)
                route.hang.wait(30)
            data = route.body.encode()
            try:
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the scraper gave up on a hanging route: expected

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        for ev in released:
            ev.set()
        for r in state.routes.values():
            if r.hang is not None:
                r.hang.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
