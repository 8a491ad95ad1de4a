"""ClickHouse server driver: clickhouse-connect over HTTP(S), same SQL as the chDB driver.

Both drivers read results as Arrow produced by the engine itself (``query_arrow`` here,
chDB's ``ArrowTable`` there) and convert them with the same pyarrow calls, so a row read
through either driver has the same Python types: tz-aware UTC datetimes, ``Decimal``,
``bytes`` for FixedString, a list of ``(key, value)`` tuples for Map. Inserts go the same
way: ``columns.to_arrow`` builds one typed Arrow table that the engine casts into the
table's columns.

Errors from clickhouse-connect (and anything under it) are mapped here::

    clickhouse_connect OperationalError (connection, HTTP timeout, 5xx) -> StoreUnavailable
    clickhouse_connect DatabaseError / ProgrammingError (engine said no) -> QueryError
    anything else                                                       -> StoreError

The client runs without a session (``autogenerate_session_id=False``): every request
names its database, so one ``ClickHouseStore`` is safe to share between threads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC
from typing import Any, Protocol
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa

from controlplane.errors import (
    ConfigError,
    GovernorError,
    Problem,
    QueryError,
    StoreError,
    StoreUnavailable,
)
from controlplane.store.base import QueryResult, StoreStatus, check_identifier, optimize_sql
from controlplane.store.typed import TypedInserts, result_from_arrow

_SERVER_MESSAGE = re.compile(r"(Code: \d+\..*?)(?: \(for url [^)]*\))?\s*$", re.DOTALL)
_TIMEOUT_CODES = {159, 160}  # TIMEOUT_EXCEEDED, TOO_SLOW
_PLACEHOLDER = re.compile(r"\{\w+:[^}]+\}")


class ClientFactory(Protocol):
    def __call__(self, **kwargs: Any) -> Any: ...


def _default_factory(**kwargs: Any) -> Any:
    import clickhouse_connect

    return clickhouse_connect.get_client(**kwargs)


class ClickHouseStore(TypedInserts):
    driver = "clickhouse"

    def __init__(
        self,
        url: str,
        *,
        database: str = "governor",
        username: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 10,
        query_timeout_s: float = 30,
        async_insert: bool = False,
        client_factory: ClientFactory = _default_factory,
    ) -> None:
        self.database = check_identifier(database, "database name")
        self.url = _check_url(url)
        if connect_timeout_s <= 0 or query_timeout_s <= 0:
            raise ConfigError(
                [Problem("store", "store", "connect_timeout_s and query_timeout_s must be > 0")]
            )
        self.query_timeout_s = query_timeout_s
        self.async_insert = async_insert
        self._types: dict[str, dict[str, str]] = {}
        self._closed = False
        parts = urlsplit(self.url)
        with self._mapped():
            self._client = client_factory(
                interface=parts.scheme,
                host=parts.hostname,
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=username or "default",
                password=password or "",
                # clickhouse-connect takes whole seconds; round up so a timeout is never 0.
                connect_timeout=math.ceil(connect_timeout_s),
                # The server stops the query at max_execution_time; the socket waits a
                # little longer so the server's own timeout error arrives first.
                send_receive_timeout=math.ceil(query_timeout_s) + 1,
                settings={"max_execution_time": query_timeout_s},
                autogenerate_session_id=False,
                tz_mode="aware",
            )
        try:
            with self._mapped():
                self._client.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
                self._client.database = self.database
        except Exception:
            with suppress(Exception):  # the original error is the one to report
                self._client.close()
            raise

    # -- error mapping ---------------------------------------------------------------
    @contextmanager
    def _mapped(self) -> Iterator[None]:
        from clickhouse_connect.driver import exceptions as ch

        try:
            yield
        except GovernorError:
            raise
        except ch.OperationalError as exc:
            raise StoreUnavailable(
                f"ClickHouse at {self.url} unavailable: {_message(exc)}"
            ) from exc
        except ch.DatabaseError as exc:
            code = getattr(exc, "code", None)
            if code in _TIMEOUT_CODES:
                raise QueryError(
                    f"query exceeded the store's query timeout ({self.query_timeout_s:g}s): "
                    f"{_message(exc)}"
                ) from exc
            raise QueryError(_message(exc)) from exc
        except OSError as exc:
            raise StoreUnavailable(f"ClickHouse at {self.url} unavailable: {exc}") from exc
        except Exception as exc:
            raise StoreError(f"ClickHouse driver error: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _binds(sql: str, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
        # Server-side binding only: given parameters but no {name:Type} placeholder,
        # clickhouse-connect would fall back to Python %-formatting of the SQL text.
        if not params or not _PLACEHOLDER.search(sql):
            return None
        return {k: _map_literal(v) if isinstance(v, dict) else v for k, v in params.items()}

    def _live(self) -> Any:
        if self._closed:
            raise StoreUnavailable("store is closed")
        return self._client

    # -- Store protocol ----------------------------------------------------------------
    def command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        client = self._live()
        with self._mapped():
            client.command(sql, parameters=self._binds(sql, params))
        if sql.lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
            self._types.clear()

    def optimize_partition(self, table: str, partition_id: str) -> None:
        """The server merges while it serves others; a merge longer than the socket
        timeout comes back as an error while the server goes on merging."""
        self.command(optimize_sql(table, partition_id))

    def _arrow(self, sql: str, params: Mapping[str, Any] | None) -> pa.Table:
        client = self._live()
        with self._mapped():
            table: pa.Table = client.query_arrow(sql, parameters=self._binds(sql, params))
            return table

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        table = self._arrow(sql, params)
        return result_from_arrow(table)

    def query_df(self, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        df: pd.DataFrame = self._arrow(sql, params).to_pandas()
        return df

    def query_arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        return self._arrow(sql, params)

    def insert_df(self, table: str, df: pd.DataFrame, *, dedup_token: str | None = None) -> None:
        if df.empty:
            return
        self.column_types(table)  # validates the table name and that it exists
        with self._mapped():
            data = pa.Table.from_pandas(df, preserve_index=False)
        self._insert_arrow(table, data, dedup_token)

    def insert_settings(self, dedup_token: str | None) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
            settings["deduplicate_blocks_in_dependent_materialized_views"] = 1
        if self.async_insert:
            settings["async_insert"] = 1
            settings["wait_for_async_insert"] = 1
            if dedup_token is not None:
                settings["async_insert_deduplicate"] = 1
        return settings

    def _insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None) -> None:
        for c in data.column_names:
            check_identifier(c, "column name")
        client = self._live()
        with self._mapped():
            client.insert_arrow(table, data, settings=self.insert_settings(dedup_token))

    def status(self) -> StoreStatus:
        from controlplane.store.migrate import current_version

        try:
            version = current_version(self)
        except StoreError as exc:
            return StoreStatus(False, self.driver, self.database, 0, str(exc))
        return StoreStatus(True, self.driver, self.database, version, self.url)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._mapped():
                self._client.close()


def _check_url(url: str) -> str:
    def bad(msg: str) -> ConfigError:
        return ConfigError([Problem("store", "store.url", msg)])

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise bad(f"expected an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise bad(
            "credentials do not belong in the URL; set GOVERNOR_CLICKHOUSE_USER and "
            "GOVERNOR_CLICKHOUSE_PASSWORD"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise bad(f"invalid port in {url!r}") from exc
    if not parts.hostname:
        raise bad(f"no host in {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise bad(f"expected http(s)://host:port with no path or query, got {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class _Literal:
    """A value clickhouse-connect sends verbatim (it binds unknown types as ``str()``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def _map_literal(value: dict[Any, Any]) -> _Literal:
    """A Map parameter as ClickHouse's ``{'k':v, ...}`` literal: clickhouse-connect would
    send JSON by default, which the server cannot parse as a Map, and escaping the
    literal as a top-level string would break its quotes."""
    from clickhouse_connect.driver.binding import format_bind_value

    pairs = (
        f"{format_bind_value(k, UTC, False)}:{format_bind_value(v, UTC, False)}"
        for k, v in value.items()
    )
    return _Literal("{" + ", ".join(pairs) + "}")


def _message(exc: BaseException) -> str:
    """The server's own ``Code: N. DB::Exception`` text when there is one, else the error."""
    text = str(exc)
    m = _SERVER_MESSAGE.search(text)
    msg = m.group(1) if m else text
    return msg.strip()[:2000]
