"""A test-only ClickHouse HTTP interface over chDB (the real ClickHouse engine, embedded).

Run as its own process (chDB allows one data directory per process)::

    python -m tests.support.chdb_http --data-dir DIR [--port 0] [--user U --password P]

It prints ``LISTENING <host> <port>`` on stdout once it accepts connections, serves on
127.0.0.1 only, and stops cleanly on SIGTERM.

The HTTP side implemented here is the subset clickhouse-connect uses (see
``docs/STORE.md``): ``GET /ping``; queries by ``POST /`` and ``GET /?query=`` with the
query in the URL, the body, or both (URL part + newline + body, as ClickHouse concatenates
them); multipart form fields (``query``, ``param_*``) that clickhouse-connect switches to
for large bound parameters; HTTP Basic / ``X-ClickHouse-User`` / ``user`` credentials;
chunked request bodies; request ``Content-Encoding`` (gzip, deflate, zstd, lz4) and
response compression when ``enable_http_compression=1`` and ``Accept-Encoding`` allow it;
the ``X-ClickHouse-*`` response headers; and ClickHouse's error responses (status, the
``X-ClickHouse-Exception-Code`` header and the ``Code: N. DB::Exception`` text).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import signal
import sys
import threading
import uuid
import zlib
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
from backports import zstd

from tests.support.chdb_engine import (
    AUTHENTICATION_FAILED,
    NOT_IMPLEMENTED,
    Engine,
    FrontError,
)

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}
# HTTP status for error codes, after ClickHouse's exceptionCodeToHTTPStatus (parse errors
# 400, unknown objects 404, auth 401, readonly 403); everything else is 500. Only 429,
# 503 and 504 change clickhouse-connect's behaviour (it retries them): never sent here.
_BAD_REQUEST = (6, 26, 27, 38, 41, 53, 62, 72)  # CANNOT_PARSE_*, TYPE_MISMATCH, SYNTAX_ERROR
_NOT_FOUND = (46, 47, 50, 60, 63, 73, 81, 115)  # UNKNOWN_FUNCTION ... UNKNOWN_SETTING
_STATUS = {
    **dict.fromkeys(_BAD_REQUEST, 400),
    **dict.fromkeys(_NOT_FOUND, 404),
    516: 401,  # AUTHENTICATION_FAILED
    164: 403,  # READONLY
    48: 501,  # NOT_IMPLEMENTED
}
_DECODERS = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "zstd": zstd.decompress,
    "lz4": lz4.frame.decompress,
}
_ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": zstd.compress,
    "lz4": lz4.frame.compress,
}


class Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], engine: Engine, users: dict[str, str]) -> None:
        super().__init__(addr, Handler)
        self.engine = engine
        self.users = users


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Front

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the client's own errors tell the story; keep test output clean

    def do_GET(self) -> None:
        self._handle(read_only=True)

    def do_POST(self) -> None:
        self._handle(read_only=False)

    def do_HEAD(self) -> None:
        self._handle(read_only=True)

    # -- request parsing -----------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            raw = b"".join(chunks)
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        enc = (self.headers.get("Content-Encoding") or "").strip().lower()
        if enc and enc != "identity":
            if enc not in _DECODERS:
                raise FrontError(NOT_IMPLEMENTED, f"Unknown Content-Encoding '{enc}'")
            raw = _DECODERS[enc](raw)
        return raw

    def _form(self, body: bytes, params: dict[str, str]) -> bytes:
        """multipart/form-data: ``query`` and ``param_*`` fields; returns the query text."""
        ctype = self.headers.get("Content-Type", "")
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        query = b""
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                raise FrontError(
                    NOT_IMPLEMENTED, "external data tables are not supported by this test front"
                )
            if name == "query":
                query = payload
            elif isinstance(name, str):
                params[name] = payload.decode()
        return query

    def _credentials(self, params: dict[str, str]) -> tuple[str, str]:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user, password
        user = self.headers.get("X-ClickHouse-User") or params.get("user") or "default"
        password = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        return user, password

    # -- handling ------------------------------------------------------------------------
    def _handle(self, *, read_only: bool) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            body = self._body()
            if url.path == "/ping":
                self._reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
                return
            if url.path != "/":
                raise FrontError(NOT_IMPLEMENTED, f"There is no handle {url.path}")
            user, password = self._credentials(params)
            if self.server.users.get(user) != password:
                raise FrontError(
                    AUTHENTICATION_FAILED,
                    f"{user}: Authentication failed: password is incorrect, or there is no "
                    f"user with such name. (AUTHENTICATION_FAILED)",
                )
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                text = self._form(body, params)
            else:
                text = body
            if "query" in params:
                text = params["query"].encode() + (b"\n" + text if text else b"")
            result = self.server.engine.execute(text, params, read_only=read_only)
        except FrontError as exc:
            self._error(exc, query_id)
            return
        except Exception as exc:  # a bug or bad input in the front: answer like a server would
            self._error(FrontError(1001, f"{type(exc).__name__}: {exc} (STD_EXCEPTION)"), query_id)
            return
        headers = {
            "Content-Type": _CONTENT_TYPES.get(result.fmt, "application/octet-stream"),
            "X-ClickHouse-Format": result.fmt,
            "X-ClickHouse-Summary": json.dumps(result.summary),
        }
        body = result.body
        engine = self.server.engine
        if _enabled(
            engine.http_setting("enable_http_compression", params, params.get("session_id"))
        ):
            enc = _pick_encoding(self.headers.get("Accept-Encoding", ""))
            if enc:
                body = _ENCODERS[enc](body)
                headers["Content-Encoding"] = enc
        self._reply(200, body, headers, query_id)

    def _error(self, exc: FrontError, query_id: str) -> None:
        text = f"{exc} (version {self.server.engine.version})\n".encode()
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(exc.code),
        }
        self._reply(_STATUS.get(exc.code, 500), text, headers, query_id)

    def _reply(self, status: int, body: bytes, headers: dict[str, str], query_id: str = "") -> None:
        self.send_response(status)
        engine = self.server.engine
        for k, v in headers.items():
            self.send_header(k, v)
        if query_id:
            self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Timezone", engine.timezone)
        self.send_header("X-ClickHouse-Server-Display-Name", "chdb-http-front")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "Keep-Alive")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _enabled(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def _pick_encoding(accept: str) -> str | None:
    """First encoding the client lists that the front can produce."""
    for item in accept.split(","):
        name = item.split(";")[0].strip().lower()
        if name in _ENCODERS:
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user", default="default")
    ap.add_argument("--password", default="")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("the test front binds loopback only")
    engine = Engine(args.data_dir)
    server = Front((args.host, args.port), engine, {args.user: args.password})
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = server.server_address[:2]
    print(f"LISTENING {host} {port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
