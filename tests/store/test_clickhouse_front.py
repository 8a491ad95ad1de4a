"""The chDB HTTP front speaks the ClickHouse HTTP interface as clickhouse-connect uses it.

These tests check the front itself, with raw HTTP (httpx) and with clickhouse-connect's
own default client (sessions on, lz4 compression, Native format), so the driver tests
that run on it are testing clickhouse-connect against ClickHouse behaviour.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import clickhouse_connect
import httpx
import lz4.frame
import pytest
from backports import zstd
from clickhouse_connect.driver import exceptions as ch_exc

from tests.support.front import FrontProcess


@pytest.fixture
def http(chdb_front: FrontProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=chdb_front.url, timeout=30) as c:
        yield c


@pytest.fixture
def client(chdb_front: FrontProcess) -> Iterator[Any]:
    """clickhouse-connect with its defaults, in a database of its own."""
    db = f"f_{uuid.uuid4().hex[:12]}"
    c = clickhouse_connect.get_client(dsn=chdb_front.url)
    c.command(f"CREATE DATABASE {db}")
    c.database = db
    try:
        yield c
    finally:
        c.command(f"DROP DATABASE {db}")
        c.close()


def test_ping_answers_ok(http: httpx.Client) -> None:
    r = http.get("/ping")
    assert (r.status_code, r.text) == (200, "Ok.\n")


_SUM = "SELECT 1 + 2"
_SETTING = b"SELECT getSetting('max_threads')"


@pytest.mark.parametrize(
    ("method", "kwargs", "body"),
    [
        pytest.param("GET", {"params": {"query": "SELECT 1 + 1"}}, "2\n",
                     id="GET with the query in the URL"),
        pytest.param("POST", {"content": _SUM.encode()}, "3\n",
                     id="POST with the query in the body"),
        pytest.param("POST", {"params": {"query": "SELECT"}, "content": b"1 + 3"}, "4\n",
                     id="POST with the query split between URL and body"),
        pytest.param("POST", {"params": {"query": "SELECT {x:UInt8} * 2", "param_x": "21"}},
                     "42\n", id="a bound parameter in the URL"),
        pytest.param("POST", {"params": {"default_format": "JSONEachRow"},
                              "content": b"SELECT 5 AS n"},
                     '{"n":5}\n', id="default_format when the query names none"),
        pytest.param("POST", {"params": {"max_threads": "1"}, "content": _SETTING}, "1\n",
                     id="a URL parameter is a query setting"),
    ],
)  # fmt: skip
def test_queries_over_raw_http(
    http: httpx.Client, method: str, kwargs: dict[str, Any], body: str
) -> None:
    r = http.request(method, "/", **kwargs)
    assert (r.status_code, r.text) == (200, body)
    assert r.headers["X-ClickHouse-Timezone"] and r.headers["X-ClickHouse-Query-Id"]
    assert "elapsed_ns" in json.loads(r.headers["X-ClickHouse-Summary"])


def test_a_setting_from_one_request_does_not_leak_into_the_next(http: httpx.Client) -> None:
    default = http.post("/", content=b"SELECT getSetting('max_threads')").text
    http.post("/", params={"max_threads": "1"}, content=b"SELECT 1")
    assert http.post("/", content=b"SELECT getSetting('max_threads')").text == default


@pytest.mark.parametrize(
    ("method", "kwargs", "status", "code", "fragment"),
    [
        pytest.param("POST", {"content": b"SELEC 1"}, 400, 62, "Syntax error",
                     id="a syntax error"),
        pytest.param("POST", {"content": b"SELECT * FROM nope.nope"}, 404, 81,
                     "UNKNOWN_DATABASE", id="an unknown database"),
        pytest.param("GET", {"params": {"query": "CREATE DATABASE x_get"}}, 403, 164,
                     "method GET implies readonly", id="a write over GET"),
        pytest.param("POST", {"params": {"no_such_setting": "1"}, "content": b"SELECT 1"},
                     404, 115, "UNKNOWN_SETTING", id="an unknown setting"),
        pytest.param("POST", {"content": b""}, 400, 62, "Empty query", id="an empty query"),
    ],
)  # fmt: skip
def test_errors_look_like_clickhouse_errors(
    http: httpx.Client, method: str, kwargs: dict[str, Any], status: int, code: int, fragment: str
) -> None:
    r = http.request(method, "/", **kwargs)
    assert r.status_code == status
    assert r.headers["X-ClickHouse-Exception-Code"] == str(code)
    assert r.text.startswith(f"Code: {code}. DB::Exception:") and fragment in r.text
    assert "(version " in r.text


@pytest.mark.parametrize(
    ("encoding", "decode"),
    [("gzip", gzip.decompress), ("zstd", zstd.decompress), ("lz4", lz4.frame.decompress)],
)
def test_responses_are_compressed_when_asked(
    http: httpx.Client, encoding: str, decode: Any
) -> None:
    with http.stream(
        "POST",
        "/",
        params={"enable_http_compression": "1"},
        headers={"Accept-Encoding": encoding},
        content=b"SELECT number FROM numbers(3)",
    ) as r:
        raw = b"".join(r.iter_raw())  # the bytes on the wire, not httpx's decoding
    assert r.headers["Content-Encoding"] == encoding
    assert decode(raw) == b"0\n1\n2\n"


def test_the_server_default_compresses_and_the_url_can_turn_it_off(http: httpx.Client) -> None:
    # enable_http_compression defaults to 1 in this engine version, as on a 26.x server;
    # clickhouse-connect then sends only Accept-Encoding, never the setting.
    sql = b"SELECT number FROM numbers(3)"
    on = http.post("/", headers={"Accept-Encoding": "zstd"}, content=sql)
    off = http.post(
        "/", params={"enable_http_compression": "0"}, headers={"Accept-Encoding": "zstd"},
        content=sql,
    )  # fmt: skip
    assert on.headers["Content-Encoding"] == "zstd" and "Content-Encoding" not in off.headers
    assert off.content == b"0\n1\n2\n"


def test_compressed_request_bodies_are_decoded(http: httpx.Client) -> None:
    r = http.post("/", headers={"Content-Encoding": "gzip"}, content=gzip.compress(b"SELECT 7"))
    assert r.text == "7\n"


def test_clickhouse_connect_native_insert_and_query_round_trip(client: Any) -> None:
    client.command(
        "CREATE TABLE t (ts DateTime64(3, 'UTC'), s LowCardinality(String), "
        "m Map(String, UInt32), n Nullable(Float64)) ENGINE = MergeTree ORDER BY ts"
    )
    ts = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    summary = client.insert(
        "t", [[ts, "a", {"k": 1}, None], [ts, "b", {}, 2.5]], column_names=["ts", "s", "m", "n"]
    )
    assert summary.written_rows == 2
    rows = client.query("SELECT s, m, n, ts FROM t ORDER BY s").result_rows
    assert [r[:3] for r in rows] == [("a", {"k": 1}, None), ("b", {}, 2.5)]
    assert rows[0][3].replace(tzinfo=UTC) == ts


def test_large_bound_parameters_go_as_form_fields_and_still_bind(client: Any) -> None:
    big = "x" * 50_000
    assert client.query("SELECT length({s:String})", parameters={"s": big}).result_rows == [
        (50_000,)
    ]


def test_session_settings_last_for_the_session_only(chdb_front: FrontProcess) -> None:
    a = clickhouse_connect.get_client(dsn=chdb_front.url, session_id=str(uuid.uuid4()))
    b = clickhouse_connect.get_client(dsn=chdb_front.url, session_id=str(uuid.uuid4()))
    try:
        default = b.command("SELECT getSetting('max_threads')")
        a.command("SET max_threads = 1")
        assert a.command("SELECT getSetting('max_threads')") == 1
        assert b.command("SELECT getSetting('max_threads')") == default
    finally:
        a.close()
        b.close()


def test_a_server_error_reaches_clickhouse_connect_as_its_database_error(client: Any) -> None:
    with pytest.raises(ch_exc.DatabaseError) as info:
        client.query("SELECT * FROM no_such_table")
    assert info.value.code == 60 and "UNKNOWN_TABLE" in str(info.value)
