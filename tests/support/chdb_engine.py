"""The engine side of the test-only ClickHouse HTTP front: one chDB session, driven the
way a ClickHouse server drives its query pipeline for an HTTP request.

What the HTTP layer hands over is already decoded (query text, body, URL parameters);
this module turns it into chDB calls:

- ``database`` -> ``USE``; ``param_<name>`` -> chDB's server-side ``{name:Type}`` binding;
- every other non-reserved URL parameter is a query setting, applied with ``SET`` for the
  duration of the request and reset to ``DEFAULT`` afterwards (session settings persist);
- ``INSERT ... FORMAT X`` with a data body: the body is written to a file and the engine
  parses it itself with ``INSERT ... SELECT * FROM file(path, X)``, so whatever format the
  client sends (Native, Arrow, RowBinary...) is read by ClickHouse's own input format;
- errors come back as ``FrontError`` with the engine's ``Code: N. DB::Exception`` text.

chDB is single-session, so requests are serialized with one lock.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# URL parameters the ClickHouse HTTP interface consumes itself (never settings).
RESERVED = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "session_id", "session_timeout", "session_check", "compress", "decompress",
    "buffer_size", "wait_end_of_query", "client_protocol_version", "role", "stacktrace",
    "close_session",
})  # fmt: skip

_CODE = re.compile(r"Code:\s*(\d+)\.")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSERT_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n)?(.*)\Z",
    re.IGNORECASE | re.DOTALL,
)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*\Z", re.IGNORECASE)
_SET_STMT = re.compile(r"^\s*SET\s+(.+?)\s*;?\s*\Z", re.IGNORECASE | re.DOTALL)
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^,]+)")
_READ_ONLY = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.IGNORECASE)

# ClickHouse error codes the front itself raises.
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
READONLY = 164
UNKNOWN_SETTING = 115
SESSION_IS_LOCKED = 373
AUTHENTICATION_FAILED = 516


class FrontError(Exception):
    """A ClickHouse-style error: ``code`` and the ``Code: N. DB::Exception: ...`` text."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}"
        super().__init__(text)


@dataclass
class Result:
    body: bytes
    fmt: str
    summary: dict[str, str]


@dataclass
class _Session:
    settings: dict[str, str] = field(default_factory=dict)
    busy: bool = False


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    def __init__(self, data_dir: str) -> None:
        from chdb import session as chs

        self._session = chs.Session(data_dir)
        self._lock = threading.Lock()
        self._tmp = tempfile.mkdtemp(prefix="body-", dir=data_dir)
        self._current_db = ""
        self._applied: dict[str, str] = {}  # settings SET in chDB right now
        self._sessions: dict[str, _Session] = {}
        self._sessions_lock = threading.Lock()
        version, tz = self._raw("SELECT version(), timezone()", "TabSeparated").decode().split()
        self.version, self.timezone = version, tz
        # Server-level defaults of the settings the HTTP layer itself acts on.
        rows = self._raw(
            "SELECT name, value FROM system.settings WHERE name = 'enable_http_compression'",
            "TabSeparated",
        )
        self.defaults = dict(line.split("\t", 1) for line in rows.decode().splitlines())

    def http_setting(self, name: str, params: Mapping[str, str], session_id: str | None) -> str:
        """The effective value of an HTTP-layer setting: URL, then session, then default."""
        if name in params:
            return params[name]
        sess = self._sessions.get(session_id) if session_id else None
        if sess is not None and name in sess.settings:
            return sess.settings[name]
        return self.defaults.get(name, "")

    def close(self) -> None:
        with self._lock:
            self._session.close()

    # -- chDB calls (lock held by callers) ------------------------------------------------
    def _raw(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> bytes:
        res = self._query(sql, fmt, params)
        return bytes(res.bytes())

    def _query(self, sql: str, fmt: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            if params:
                return self._session.query(sql, fmt, params=dict(params))
            return self._session.query(sql, fmt)
        except Exception as exc:  # chDB raises ChdbError/RuntimeError with the engine's text
            # chDB quirk: a query that fails mid-way can leave its partial output (e.g. an
            # Arrow header) in the session, prepended to the next result; drain it.
            try:
                self._session.query("SELECT 1", "TabSeparated")
            except Exception:  # noqa: S110 - best effort; the original error is what matters
                pass
            msg = str(exc).strip()
            m = _CODE.search(msg)
            raise FrontError(int(m.group(1)) if m else 1001, msg) from exc

    def _use(self, database: str) -> None:
        if database != self._current_db:
            if not _SETTING_NAME.match(database):
                raise FrontError(81, f"Database {database} does not exist. (UNKNOWN_DATABASE)")
            self._raw(f"USE {database}", "TabSeparated")
            self._current_db = database

    def _apply_settings(self, wanted: Mapping[str, str]) -> None:
        for name in [n for n in self._applied if n not in wanted]:
            self._raw(f"SET {name} = DEFAULT", "TabSeparated")
            del self._applied[name]
        for name, value in wanted.items():
            if self._applied.get(name) == value:
                continue
            if not _SETTING_NAME.match(name):
                raise FrontError(UNKNOWN_SETTING, f"Unknown setting '{name}'. (UNKNOWN_SETTING)")
            self._raw(f"SET {name} = {quote(value)}", "TabSeparated")
            self._applied[name] = value

    # -- sessions ------------------------------------------------------------------------
    def _enter_session(self, session_id: str | None) -> _Session | None:
        if not session_id:
            return None
        with self._sessions_lock:
            sess = self._sessions.setdefault(session_id, _Session())
            if sess.busy:
                raise FrontError(
                    SESSION_IS_LOCKED,
                    f"Session {session_id} is locked by a concurrent client. (SESSION_IS_LOCKED)",
                )
            sess.busy = True
            return sess

    def _leave_session(self, session_id: str | None, sess: _Session | None, close: bool) -> None:
        if sess is None or session_id is None:
            return
        with self._sessions_lock:
            sess.busy = False
            if close:
                self._sessions.pop(session_id, None)

    # -- requests ------------------------------------------------------------------------
    def execute(self, text: bytes, params: Mapping[str, str], *, read_only: bool) -> Result:
        """Run one request: ``text`` is the query (URL part + body) as ClickHouse sees it."""
        if params.get("compress") in ("1", "true") or params.get("decompress") in ("1", "true"):
            raise FrontError(
                NOT_IMPLEMENTED,
                "ClickHouse's native block compression (compress/decompress parameters) is "
                "not supported by this test front; use HTTP Content-Encoding. (NOT_IMPLEMENTED)",
            )
        binds = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {
            k: v for k, v in params.items() if k not in RESERVED and not k.startswith("param_")
        }
        session_id = params.get("session_id") or None
        sess = self._enter_session(session_id)
        try:
            if sess is not None:
                settings = {**sess.settings, **settings}
            with self._lock:
                self._use(params.get("database") or "default")
                self._apply_settings(settings)
                return self._dispatch(text, params, binds, sess, read_only)
        finally:
            self._leave_session(session_id, sess, params.get("close_session") == "1")

    def _dispatch(
        self,
        text: bytes,
        params: Mapping[str, str],
        binds: Mapping[str, str],
        sess: _Session | None,
        read_only: bool,
    ) -> Result:
        m = _INSERT_DATA.match(text)
        if m:
            if read_only:
                raise _readonly_error()
            return self._insert(m.group(1).decode(), m.group(2).decode(), m.group(3), binds)
        sql = text.decode("utf-8", errors="replace").strip()
        if not sql:
            raise FrontError(SYNTAX_ERROR, "Empty query. (SYNTAX_ERROR)")
        if read_only and not _READ_ONLY.match(sql):
            raise _readonly_error()
        fm = _FORMAT_CLAUSE.search(sql)
        fmt = fm.group(1) if fm else params.get("default_format") or "TabSeparated"
        set_m = _SET_STMT.match(sql)
        res = self._query(sql, fmt, binds)
        if set_m:
            # A SET lasts for the session; without one it ends with this request.
            for name, value in _ASSIGN.findall(set_m.group(1)):
                literal = value.strip()
                plain = literal[1:-1] if literal.startswith("'") else literal
                self._applied[name] = plain
                if sess is not None:
                    sess.settings[name] = plain
        return Result(bytes(res.bytes()), fmt, _summary(res))

    def _insert(self, target: str, fmt: str, data: bytes, binds: Mapping[str, str]) -> Result:
        if not data:
            return Result(b"", fmt, {"written_rows": "0", "written_bytes": "0"})
        fd, path = tempfile.mkstemp(dir=self._tmp, suffix="." + fmt.lower())
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            sql = f"{target} SELECT * FROM file({quote(path)}, {quote(fmt)})"
            res = self._query(sql, "TabSeparated", binds)
        finally:
            os.unlink(path)
        return Result(b"", fmt, _summary(res))


def _readonly_error() -> FrontError:
    return FrontError(
        READONLY,
        "Cannot execute query in readonly mode. For queries over HTTP, method GET implies "
        "readonly. You should use method POST for modifying queries. (READONLY)",
    )


def _summary(res: Any) -> dict[str, str]:
    return {
        "read_rows": str(res.rows_read()),
        "read_bytes": str(res.bytes_read()),
        "written_rows": str(res.rows_written()),
        "written_bytes": str(res.bytes_written()),
        "elapsed_ns": str(int(res.elapsed() * 1e9)),
    }
