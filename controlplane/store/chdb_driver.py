"""Embedded ClickHouse (chDB) driver: a data directory on local disk, no server.

chDB runs one embedded server per process and per data directory, so this module keeps
one shared session per process (several ``ChdbStore`` objects, one per database, share
it) and serializes access with a lock. Another process is kept out with an advisory
lock file, so a second ``governor serve`` on the same directory fails with a clear
message instead of chDB's opaque one.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from controlplane.errors import QueryError, StoreError, StoreLocked, StoreUnavailable
from controlplane.store.base import QueryResult, StoreStatus, check_identifier, optimize_sql
from controlplane.store.typed import TypedInserts, result_from_arrow

_LOCK_FILE = ".governor.lock"
# Errors that mean the engine itself is unusable rather than the statement being wrong.
_UNAVAILABLE = re.compile(r"EmbeddedServer|Failed to create connection|Cannot lock file")


class _Embedded:
    """The process-wide chDB session and its guards."""

    def __init__(self, path: Path) -> None:
        from chdb import session as chs

        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 64, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            raise StoreLocked(
                f"data directory {path} is in use by another process (pid {holder or '?'}); "
                "chDB allows one process per directory: stop it, or use --data-dir elsewhere, "
                "or talk to it through its API"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, str(os.getpid()).encode(), 0)
        try:
            # chdb ships no type hints; keep the untyped object behind this class.
            session: Any = chs.Session(str(path))  # type: ignore[no-untyped-call]
            # chDB loads a part's marks in a 50-thread pool, one task per marks file. The
            # first reads after a start (hundreds of files) then pay for the tasks and
            # threads on a few cores; loading in the reading thread made the first SLO
            # cycle ~100 ms faster at 100M rows (docs/ARCHITECTURE.md).
            try:
                session.query("SET load_marks_asynchronously = 0", "CSV")
            except Exception:
                session.close()
                raise
        except Exception as exc:
            self._release()
            raise StoreUnavailable(f"cannot open embedded store at {path}: {exc}") from exc
        self.session = session
        self.lock = threading.RLock()
        self.current_db: str | None = None
        self.current_timeout: float = 0
        self.refs = 0

    def _release(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def close(self) -> None:
        # Under the lock: a query or insert running on another thread (the SLO engine's
        # write-behind save) finishes before the session goes.
        with self.lock:
            try:
                self.session.close()
            finally:
                self._release()


_registry_lock = threading.Lock()
_embedded: _Embedded | None = None


def _acquire(path: Path) -> _Embedded:
    global _embedded
    with _registry_lock:
        if _embedded is not None and _embedded.path != path:
            raise StoreError(
                f"this process already uses the embedded store at {_embedded.path}; "
                f"chDB allows one data directory per process (asked for {path})"
            )
        if _embedded is None:
            _embedded = _Embedded(path)
        _embedded.refs += 1
        return _embedded


def _release(emb: _Embedded) -> None:
    global _embedded
    with _registry_lock:
        emb.refs -= 1
        if emb.refs == 0:
            emb.close()
            _embedded = None


def format_param(value: Any) -> Any:
    """chDB binds parameters from their text form; give it ClickHouse literals."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        # Parameter values are in ClickHouse's escaped text format (as over HTTP): a raw
        # newline or tab ends the value and a backslash starts an escape.
        return value.translate(_ESCAPES)
    if isinstance(value, list | tuple):
        inner = ",".join(_array_item(v) for v in value)
        return f"[{inner}]"
    if isinstance(value, dict):
        inner = ",".join(f"{_array_item(k)}:{_array_item(v)}" for k, v in value.items())
        return "{" + inner + "}"
    return value


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def _array_item(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(format_param(v))


class ChdbStore(TypedInserts):
    driver = "chdb"

    def __init__(
        self,
        path: str | os.PathLike[str],
        database: str = "governor",
        *,
        query_timeout_s: float | None = None,
    ) -> None:
        self.database = check_identifier(database, "database name")
        if query_timeout_s is not None and query_timeout_s <= 0:
            raise StoreError(f"query_timeout_s must be positive, got {query_timeout_s}")
        self.query_timeout_s = query_timeout_s
        self.path = Path(path).resolve()
        self._emb = _acquire(self.path)
        self._types: dict[str, dict[str, str]] = {}
        self._closed = False
        try:
            with self._emb.lock:
                self._raw(
                    f"CREATE DATABASE IF NOT EXISTS {self.database}", None, "CSV", use_db=False
                )
        except Exception:
            self.close()
            raise

    # -- low level -------------------------------------------------------------------
    def _raw(
        self, sql: str, params: Mapping[str, Any] | None, fmt: str, *, use_db: bool = True
    ) -> Any:
        if self._closed:
            raise StoreUnavailable("store is closed")
        emb = self._emb
        with emb.lock:
            try:
                self._select_session_state(emb, use_db=use_db)
                bound = {k: format_param(v) for k, v in (params or {}).items()}
                return (
                    emb.session.query(sql, fmt, params=bound)
                    if bound
                    else (emb.session.query(sql, fmt))
                )
            except Exception as exc:
                _drain(emb)
                msg = str(exc)
                if _UNAVAILABLE.search(msg):
                    raise StoreUnavailable(f"embedded store unavailable: {msg}") from exc
                if "TIMEOUT_EXCEEDED" in msg and self.query_timeout_s:
                    raise QueryError(
                        f"query exceeded the store's query timeout ({self.query_timeout_s:g}s): "
                        + _first_line(msg)
                    ) from exc
                raise QueryError(_first_line(msg)) from exc

    def _select_session_state(self, emb: _Embedded, *, use_db: bool = True) -> None:
        if use_db and emb.current_db != self.database:
            emb.session.query(f"USE {self.database}", "CSV")
            emb.current_db = self.database
        # The session is shared by stores with their own timeouts (0 = none).
        timeout = self.query_timeout_s or 0
        if emb.current_timeout != timeout:
            emb.session.query(f"SET max_execution_time = {float(timeout)!r}", "CSV")
            emb.current_timeout = timeout

    # -- Store protocol ----------------------------------------------------------------
    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._raw(sql, params, "CSV")
        if sql.lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
            self._types.clear()

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        return result_from_arrow(self.query_arrow(sql, params))

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        table: pa.Table = self._raw(sql, params, "ArrowTable")
        return table

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        df: pd.DataFrame = self._raw(sql, params, "DataFrame")
        return df

    def insert_df(self, table: str, df: pd.DataFrame, *, dedup_token: str | None = None) -> None:
        if df.empty:
            return
        self.column_types(table)  # validates the table name and that it exists
        self._insert_arrow(table, pa.Table.from_pandas(df, preserve_index=False), dedup_token)

    def _insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None) -> None:
        cols = ", ".join(check_identifier(c, "column name") for c in data.column_names)
        settings = ""
        if dedup_token is not None:
            token = dedup_token.replace("\\", "\\\\").replace("'", "\\'")
            settings = (
                f" SETTINGS insert_deduplication_token = '{token}',"
                " deduplicate_blocks_in_dependent_materialized_views = 1"
            )
        # The batch goes in as an Arrow IPC stream parsed by the engine's ArrowStream
        # input format: about half the cost of `SELECT * FROM Python(table)`, which walks
        # the Python object (bench/store.py, insert_transport).
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        self._stream_insert(f"INSERT INTO {table} ({cols}){settings}", sink.getvalue())

    def _stream_insert(self, sql: str, payload: pa.Buffer) -> None:
        if self._closed:
            raise StoreUnavailable("store is closed")
        emb = self._emb
        with emb.lock:
            try:
                self._select_session_state(emb)
                inserter = emb.session.send_insert(sql, "ArrowStream")
                try:
                    inserter.append(payload.to_pybytes())
                    inserter.finish()
                except BaseException:
                    inserter.cancel()
                    raise
            except Exception as exc:
                _drain(emb)
                msg = _engine_message(str(exc))
                if _UNAVAILABLE.search(msg):
                    raise StoreUnavailable(f"embedded store unavailable: {msg}") from exc
                raise QueryError(_first_line(msg)) from exc

    def optimize_partition(self, table: str, partition_id: str) -> None:
        """On a connection of its own to the same embedded engine, outside the session's
        lock: a merge takes seconds (15 s for a month of ``requests_1h`` at 100M
        requests), during which the session's other calls would all wait."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        import chdb

        sql = optimize_sql(table, partition_id, self.database)
        try:
            conn: Any = chdb.connect(str(self.path))  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise StoreUnavailable(f"embedded store unavailable: {exc}") from exc
        try:
            conn.query(sql, "CSV")
        except Exception as exc:
            raise QueryError(_first_line(_engine_message(str(exc)))) from exc
        finally:
            conn.close()

    def status(self) -> StoreStatus:
        from controlplane.store.migrate import current_version

        try:
            version = current_version(self)
        except StoreError as exc:
            return StoreStatus(False, self.driver, self.database, 0, str(exc))
        return StoreStatus(True, self.driver, self.database, version, str(self.path))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self._emb)


def _drain(emb: _Embedded) -> None:
    """chDB quirk: a query that fails mid-way (e.g. on max_execution_time) leaves its
    partial Arrow output in the session, which corrupts the next result ("Invalid
    flatbuffers message"); a throwaway query clears it."""
    try:
        emb.session.query("SELECT 1", "CSV")
    except Exception:  # noqa: S110 - best effort; the caller reports the original error
        pass


def _engine_message(msg: str) -> str:
    """chDB prefixes streaming-insert errors ("Streaming insert finish failed: Code: ...");
    keep the engine's own text, as for queries."""
    head, sep, rest = msg.partition(" failed: ")
    return rest if sep and head.startswith("Streaming insert") else msg


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    return line[:2000]
