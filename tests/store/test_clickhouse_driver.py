"""ClickHouseStore behaviour that only a server driver has: URLs, credentials, timeouts,
outages and the mapping of every clickhouse-connect exception to the store's errors."""

from __future__ import annotations

import inspect
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions
from clickhouse_connect.driver import exceptions as ch_exc

from controlplane import conventions as cv
from controlplane.config import StoreConfig
from controlplane.errors import (
    ConfigError,
    QueryError,
    StoreError,
    StoreUnavailable,
)
from controlplane.store import connect
from controlplane.store.clickhouse_driver import ClickHouseStore
from tests.support.front import FrontProcess


def _db() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def locked_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontProcess]:
    """A front whose only user is ``governor`` with a password."""
    front = FrontProcess(tmp_path_factory.mktemp("locked"), user="governor", password="s3cret")
    with front:
        yield front


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        pytest.param(
            "http://u:p@127.0.0.1:8123", "credentials do not belong", id="credentials in the URL"
        ),
        pytest.param("ftp://127.0.0.1:8123", "http:// or https://", id="a scheme that is not http"),
        pytest.param("http://127.0.0.1:8123/db?x=1", "no path or query", id="a path or a query"),
        pytest.param("http://:8123", "no host", id="no host"),
        pytest.param("http://127.0.0.1:99999", "invalid port", id="a port out of range"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_store_url(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        ClickHouseStore(url)
    assert info.value.problems[0].path == "store.url"


def test_a_dead_url_raises_store_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}.*unavailable"):
        ClickHouseStore(f"http://127.0.0.1:{port}", connect_timeout_s=1)


def test_a_server_that_never_answers_raises_store_unavailable_after_the_timeout() -> None:
    with socket.socket() as s:  # accepts connections (backlog) but never replies
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        with pytest.raises(StoreUnavailable, match="(?i)timed out"):
            ClickHouseStore(f"http://127.0.0.1:{port}", query_timeout_s=0.5)


def test_a_query_longer_than_the_timeout_is_stopped_and_the_store_stays_usable(
    chdb_front: FrontProcess,
) -> None:
    store = ClickHouseStore(chdb_front.url, database=_db(), query_timeout_s=0.5)
    try:
        with pytest.raises(QueryError, match=r"query timeout \(0.5s\).*TIMEOUT_EXCEEDED"):
            store.query("SELECT count() FROM numbers(100000000000000)")
        assert store.query("SELECT 1").rows == [(1,)]
    finally:
        store.command(f"DROP DATABASE {store.database}")
        store.close()


def test_credentials_come_from_arguments_and_a_wrong_password_is_refused(
    locked_front: FrontProcess,
) -> None:
    with pytest.raises(QueryError, match="AUTHENTICATION_FAILED"):
        ClickHouseStore(locked_front.url, username="governor", password="wrong")
    store = ClickHouseStore(locked_front.url, username="governor", password="s3cret")
    try:
        assert store.query("SELECT currentDatabase()").rows == [("governor",)]
    finally:
        store.close()


def test_connect_reads_url_and_credentials_from_the_environment(
    locked_front: FrontProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cv.ENV_CLICKHOUSE_URL, locked_front.url)
    monkeypatch.setenv(cv.ENV_CLICKHOUSE_USER, "governor")
    monkeypatch.setenv(cv.ENV_CLICKHOUSE_PASSWORD, "s3cret")
    store = connect(StoreConfig(database="from_env"))
    try:
        assert store.driver == "clickhouse" and store.database == "from_env"
        assert store.query("SELECT currentDatabase()").rows == [("from_env",)]
    finally:
        store.close()


def test_an_outage_after_connecting_is_reported_by_status_and_raises_unavailable(
    tmp_path: Path,
) -> None:
    with FrontProcess(tmp_path / "front") as front:
        store = ClickHouseStore(front.url, database="outage", query_timeout_s=2)
        assert store.status().ok
    st = store.status()
    assert not st.ok and st.driver == "clickhouse" and "unavailable" in st.detail
    with pytest.raises(StoreUnavailable):
        store.insert_rows(cv.SCHEMA_MIGRATIONS, ["version"], [(1,)])
    store.close()


def test_inserts_and_queries_from_several_threads_share_one_store(
    ch_store: ClickHouseStore,
) -> None:
    errors: list[BaseException] = []
    now = datetime.now(UTC)
    cols = ["ts", "action_id", "pool"]
    sql = "SELECT count() FROM actions WHERE pool = {p:String}"

    def work(n: int) -> None:
        try:
            for i in range(5):
                ch_store.insert_rows(cv.ACTIONS, cols, [(now, f"{n}-{i}", f"p{n}")])
                ch_store.query(sql, {"p": f"p{n}"})
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ch_store.query("SELECT count() FROM actions").rows == [(20,)]


def test_async_insert_and_dedup_settings_are_sent_with_inserts_and_accepted(
    chdb_front: FrontProcess,
) -> None:
    import clickhouse_connect

    sent: list[dict[str, Any]] = []  # the settings each insert hands to the client

    def recording_client(**kwargs: Any) -> Any:
        client = clickhouse_connect.get_client(**kwargs)
        real = client.insert_arrow

        def insert_arrow(table: str, data: Any, *args: Any, **kw: Any) -> Any:
            sent.append(dict(kw.get("settings") or {}))
            return real(table, data, *args, **kw)

        client.insert_arrow = insert_arrow
        return client

    store = ClickHouseStore(chdb_front.url, database=_db(), async_insert=True,
                            client_factory=recording_client)  # fmt: skip
    try:
        expected = {
            "insert_deduplication_token": "tok",
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            "async_insert": 1,
            "wait_for_async_insert": 1,
            "async_insert_deduplicate": 1,
        }
        assert store.insert_settings("tok") == expected
        store.command("CREATE TABLE t (a UInt32) ENGINE = MergeTree ORDER BY a "
                      "SETTINGS non_replicated_deduplication_window = 100")  # fmt: skip
        store.insert_rows("t", ["a"], [(1,), (2,)], dedup_token="tok")
        store.insert_rows("t", ["a"], [(1,), (2,)], dedup_token="tok")
        assert sent == [expected, expected]  # what went out with each insert
        assert store.query("SELECT count() FROM t").rows == [(2,)]  # and was honoured
    finally:
        store.command(f"DROP DATABASE {store.database}")
        store.close()


# -- every clickhouse-connect exception is mapped ---------------------------------------
def _all_exceptions() -> list[type[BaseException]]:
    found = [
        obj
        for _, obj in inspect.getmembers(ch_exc, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == ch_exc.__name__
    ]
    assert len(found) >= 10  # the module still holds the classes we think it does
    return [*found, urllib3.exceptions.ProtocolError, ConnectionResetError, ValueError]


class _Raising:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.database: str | None = None

    def command(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    query_arrow = insert_arrow = command

    def close(self) -> None:
        pass


def _instance(cls: type[BaseException]) -> BaseException:
    try:
        return cls("boom")
    except TypeError:
        return cls()


@pytest.mark.parametrize("cls", _all_exceptions(), ids=lambda c: c.__name__)
def test_no_underlying_exception_leaks_unmapped(cls: type[BaseException]) -> None:
    exc = _instance(cls)
    with pytest.raises(StoreError) as info:
        ClickHouseStore("http://127.0.0.1:1", client_factory=lambda **kw: _Raising(exc))
    assert info.value.__cause__ is exc
    expected = (
        StoreUnavailable
        if isinstance(exc, ch_exc.OperationalError | OSError)
        else QueryError
        if isinstance(exc, ch_exc.DatabaseError)
        else StoreError
    )
    assert type(info.value) is expected


def test_errors_raised_by_the_client_factory_are_mapped_too() -> None:
    def factory(**kwargs: Any) -> Any:
        raise ch_exc.OperationalError("connection refused")

    with pytest.raises(StoreUnavailable) as info:
        ClickHouseStore("http://127.0.0.1:1", client_factory=factory)
    assert isinstance(info.value.__cause__, ch_exc.OperationalError)
