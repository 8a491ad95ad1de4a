"""The Store contract, run against both drivers.

``any_store`` is the embedded chDB driver and then ``ClickHouseStore`` talking HTTP to the
chDB front (a real ClickHouse engine in a subprocess), each in a fresh, migrated
database. Every table the migrations create is discovered at run time, so a new table or
column type is covered (or fails loudly here) without editing this file.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from controlplane import conventions as cv
from controlplane.errors import QueryError, SchemaTooNew
from controlplane.store import rollups as rollups_api
from controlplane.store.base import Store
from controlplane.store.migrate import known_migrations, migrate

# Recent enough that the tables' TTLs (30 days and more) keep the rows.
BASE = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=123456)


# -- sample values per ClickHouse type: (value to insert, value expected back) ----------
def _args(t: str, prefix: str) -> list[str]:
    inner, parts, depth, start = t[len(prefix) : -1], [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    return [*parts, inner[start:].strip()]


def sample(ch_type: str, i: int) -> tuple[Any, Any]:
    t = ch_type
    if t.startswith("Nullable("):
        return (None, None) if i % 2 else sample(t[len("Nullable(") : -1], i)
    if t.startswith("LowCardinality("):
        return sample(t[len("LowCardinality(") : -1], i)
    if t.startswith("DateTime64("):
        precision = int(_args(t, "DateTime64(")[0])
        v = BASE + timedelta(minutes=i)
        v = v.replace(microsecond=v.microsecond // 10 ** (6 - precision) * 10 ** (6 - precision))
        return v, v
    if t.startswith("FixedString("):
        n = int(t[len("FixedString(") : -1])
        raw = bytes((i + k) % 256 for k in range(n))
        return raw.hex(), raw
    if t.startswith("Map("):
        kt, vt = _args(t, "Map(")
        (k1, ek1), (v1, ev1) = sample(kt, i), sample(vt, 0)
        (k2, ek2), (v2, ev2) = sample(kt, i + 1), sample(vt, 2)
        return {k1: v1, k2: v2}, [(ek1, ev1), (ek2, ev2)]
    if t.startswith("Array("):
        pairs = [sample(t[len("Array(") : -1], i + k) for k in range(i % 3)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if m := re.match(r"^Decimal\((\d+), (\d+)\)$", t):
        v = Decimal("1.000000007") + i if int(m.group(2)) >= 9 else Decimal(i) + Decimal("0.5")
        return v, v
    simple: dict[str, tuple[Any, Any]] = {
        "String": (f"s{i} tab\t quote' backslash\\ é", f"s{i} tab\t quote' backslash\\ é"),
        "UInt8": (200 + i, 200 + i),
        "UInt16": (60000 + i, 60000 + i),
        "UInt32": (4_000_000_000 + i, 4_000_000_000 + i),
        "UInt64": (2**64 - 1 - i, 2**64 - 1 - i),
        "Int64": (-(2**62) + i, -(2**62) + i),
        "Float32": (0.25 * (i + 1), 0.25 * (i + 1)),
        "Float64": (0.1 + i, 0.1 + i),
        "Bool": (i % 2 == 0, i % 2 == 0),
        "Date": (date(2026, 3, 1 + i), date(2026, 3, 1 + i)),
    }
    if t in simple:
        return simple[t]
    raise AssertionError(f"no sample value for type {t!r}: extend sample() in the contract test")


def _tables(store: Store) -> dict[str, dict[str, str]]:
    res = store.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND engine LIKE '%MergeTree' AND engine != 'AggregatingMergeTree' "
        "AND name != {mig:String} ORDER BY name",
        {"db": store.database, "mig": cv.SCHEMA_MIGRATIONS},
    )
    out = {}
    for (name,) in res.rows:
        cols = store.query(
            "SELECT name, type FROM system.columns WHERE database = {db:String} "
            "AND table = {t:String} ORDER BY position",
            {"db": store.database, "t": name},
        )
        out[name] = dict(cols.rows)
    return out


def _typed(rows: list[tuple[Any, ...]]) -> list[list[tuple[str, Any]]]:
    return sorted(([(type(v).__name__, v) for v in r] for r in rows), key=repr)


def test_rows_of_every_table_and_column_type_read_back_with_the_same_values_and_types(
    any_store: Store,
) -> None:
    tables = _tables(any_store)
    assert {cv.REQUESTS, cv.GPU_SAMPLES, cv.REPLICA_SAMPLES, cv.ACTIONS} <= set(tables)
    mismatches = {}
    for table, types in tables.items():
        cols = list(types)
        pairs = [[sample(types[c], i) for c in cols] for i in range(3)]
        any_store.insert_rows(table, cols, [[p[0] for p in row] for row in pairs])
        got = any_store.query(f"SELECT {', '.join(cols)} FROM {table}").rows
        want = [tuple(p[1] for p in row) for row in pairs]
        if _typed(got) != _typed(want):
            mismatches[table] = (_typed(got), _typed(want))
    assert not mismatches


def _requests(n: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    cols = ["ts", "pool", "model", "tenant", "status", "ttft_us", "e2e_us", "input_tokens",
            "output_tokens", "cost_usd", "trace_id", "attributes"]  # fmt: skip
    rows = [
        (
            BASE + timedelta(seconds=50 * i),
            "chat",
            "m",
            f"t{i % 2}",
            "ok" if i % 4 else "error",
            1000 * (i + 1),
            250_000 + i,
            100 + i,
            20 + i,
            Decimal("0.000120001") * (i + 1),
            f"{i:032x}",
            {"route": f"/v1/{i}"},
        )  # fmt: skip
        for i in range(n)
    ]
    return cols, rows


def _counts(store: Store) -> tuple[int, int, int]:
    raw = store.query("SELECT count() FROM requests").rows[0][0]
    m1 = store.query("SELECT sum(requests) FROM requests_1m").rows[0][0]
    h1 = store.query("SELECT sum(requests) FROM requests_1h").rows[0][0]
    return int(raw), int(m1 or 0), int(h1 or 0)


def test_a_retried_insert_with_the_same_dedup_token_is_a_no_op_in_raw_and_rollups(
    any_store: Store,
) -> None:
    cols, rows = _requests(6)
    any_store.insert_rows(cv.REQUESTS, cols, rows, dedup_token="batch-1")
    any_store.insert_rows(cv.REQUESTS, cols, rows, dedup_token="batch-1")
    assert _counts(any_store) == (6, 6, 6)
    any_store.insert_rows(cv.REQUESTS, cols, rows, dedup_token="batch-2")
    assert _counts(any_store) == (12, 12, 12)
    # The same holds for DataFrame inserts.
    df = pd.DataFrame({"ts": [BASE, BASE + timedelta(minutes=1)], "pool": ["a", "b"]})
    any_store.insert_df(cv.REQUESTS, df, dedup_token="df-1")
    any_store.insert_df(cv.REQUESTS, df, dedup_token="df-1")
    assert _counts(any_store) == (14, 14, 14)


def test_arrow_inserts_feed_the_rollups_dedup_and_name_unknown_columns(any_store: Store) -> None:
    ts = pa.array([BASE, BASE + timedelta(minutes=1)], pa.timestamp("us", tz="UTC"))
    data = pa.table({"ts": ts, "pool": ["a", "b"], "ttft_us": pa.array([1000, 2000], pa.uint32())})
    any_store.insert_arrow(cv.REQUESTS, data, dedup_token="arrow-1")
    any_store.insert_arrow(cv.REQUESTS, data, dedup_token="arrow-1")
    assert _counts(any_store) == (2, 2, 2)
    got = any_store.query(f"SELECT pool, ttft_us FROM {cv.REQUESTS} ORDER BY pool").rows
    assert got == [("a", 1000), ("b", 2000)]
    with pytest.raises(QueryError, match="no column.*bogus"):
        any_store.insert_arrow(cv.REQUESTS, data.append_column("bogus", pa.array([1, 2])))


def test_rollups_and_dataframes_read_back_identically_through_both_drivers(
    store: Store, ch_store: Store
) -> None:
    cols, rows = _requests(40)
    rollups, frames = [], []
    for s in (store, ch_store):
        s.insert_rows(cv.REQUESTS, cols, rows)
        rollups.append(
            {
                t: s.query(f"SELECT * FROM {t} FINAL ORDER BY pool, model, tenant, {b}").rows
                for t, b in ((cv.REQUESTS_1M, "minute"), (cv.REQUESTS_1H, "hour"))
            }
        )
        frames.append(s.query_df("SELECT pool, tenant, ts, input_tokens FROM requests ORDER BY ts"))
    assert rollups[0] == rollups[1]
    assert sum(r[4] for r in rollups[0][cv.REQUESTS_1M]) == 40
    # The SLI readers (bound DateTime/UInt32 parameters, UNION of both rollups) agree too.
    since, until = BASE - timedelta(hours=2), BASE + timedelta(hours=3)
    sel = rollups_api.Selector(pool="chat")
    slis = [
        (
            rollups_api.latency_good_total(s, sel, "ttft", 0.02, since, until),
            rollups_api.availability_good_total(s, sel, since, until),
            rollups_api.totals(s, sel, since, until),
            rollups_api.latency_quantiles(s, sel, "e2e", [0.5, 0.99], since, until),
        )
        for s in (store, ch_store)
    ]
    assert slis[0] == slis[1]
    assert slis[0][0].total == 30 and slis[0][1] == rollups_api.GoodTotal(30, 40)
    # Values agree; dtypes may not (chDB's own DataFrame output vs Arrow's, see STORE.md).
    pd.testing.assert_frame_equal(frames[0], frames[1], check_dtype=False)
    assert list(frames[1]["input_tokens"]) == list(range(100, 140))
    # Array columns come back columnar from query_arrow (the saved SLO hours' read).
    arrows = []
    for s in (store, ch_store):
        row = ("requests_1h", "sig", BASE.replace(microsecond=0), 5, ["chat"], ["m"], ["t0"],
               [3, -4], BASE)  # fmt: skip
        names = ["source", "signature", "hour", "requests", "pools", "models", "tenants",
                 "vals", "saved_at"]  # fmt: skip
        s.insert_rows(cv.SLO_HOUR_STATE, names, [row])
        arrows.append(s.query_arrow(f"SELECT pools, vals, requests FROM {cv.SLO_HOUR_STATE}"))
    assert arrows[0].to_pylist() == arrows[1].to_pylist()
    assert arrows[0].to_pylist() == [{"pools": ["chat"], "vals": [3, -4], "requests": 5}]


_S = "it's\ta\nb\\c"
_D = Decimal("1.000000007")
PARAMS = [
    pytest.param("String", _S, _S, id="a string with quotes, tabs, newlines and backslashes"),
    pytest.param("UInt64", 2**63 + 5, 2**63 + 5, id="a 64-bit unsigned integer"),
    pytest.param("Decimal(18, 9)", _D, _D, id="an exact decimal"),
    pytest.param("Array(String)", ["a", "b'c"], ["a", "b'c"], id="an array of strings"),
    pytest.param("Date", date(2026, 3, 1), date(2026, 3, 1), id="a date"),
    pytest.param("Map(String, UInt32)", {"a": 1, "b": 2}, [("a", 1), ("b", 2)], id="a map"),
    pytest.param("DateTime64(6, 'UTC')", BASE, BASE, id="a UTC datetime keeps microseconds"),
    pytest.param(
        "DateTime64(6, 'UTC')", BASE.astimezone(timezone(timedelta(hours=2))), BASE,
        id="a datetime in another zone binds as the same instant",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("ch_type", "value", "expected"), PARAMS)
def test_parameters_are_bound_server_side_with_their_types(
    shared_store: Store, ch_type: str, value: Any, expected: Any
) -> None:
    res = shared_store.query(f"SELECT {{v:{ch_type}}} AS v, toTypeName(v)", {"v": value})
    assert res.rows == [(expected, ch_type)]


def test_migrations_apply_once_are_recorded_and_a_newer_schema_is_refused(
    any_store: Store,
) -> None:
    known = known_migrations()
    recorded = any_store.query("SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded.rows == [(m.version, m.name) for m in known]
    assert migrate(any_store) == []
    assert any_store.query("SELECT count() FROM schema_migrations").rows[0][0] == len(known)
    assert any_store.status().schema_version == known[-1].version

    newest = known[-1].version
    any_store.insert_rows(
        cv.SCHEMA_MIGRATIONS, ["version", "name", "applied_at"], [(newest + 7, "future", BASE)]
    )
    with pytest.raises(SchemaTooNew) as info:
        migrate(any_store)
    msg = str(info.value)
    assert f"schema version {newest + 7}" in msg and f"({newest})" in msg
    assert any_store.database in msg and "upgrade Governor" in msg


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        pytest.param("requests; DROP TABLE requests", ["ts"], "invalid table name",
                     id="a table name with SQL in it"),
        pytest.param("requests", ["ts", "pool) SELECT 1 --"],
                     "invalid column name|unknown column|has no column",
                     id="a column name with SQL in it"),
        pytest.param("no_such_table", ["ts"], "unknown table", id="a table that does not exist"),
        pytest.param("requests", ["ts", "no_such_column"], "unknown column|has no column",
                     id="a column that does not exist"),
    ],
)  # fmt: skip
def test_invalid_identifiers_are_rejected_before_anything_runs(
    shared_store: Store, table: str, columns: list[str], message: str
) -> None:
    # Governor's own check, by its message: not an engine error after the statement ran.
    with pytest.raises(QueryError, match=message):
        shared_store.insert_rows(table, columns, [[BASE] + ["x"] * (len(columns) - 1)])
    assert shared_store.query("SELECT count() FROM requests").rows == [(0,)]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        pytest.param("SELEC 1", "Syntax error", id="a syntax error"),
        pytest.param("SELECT * FROM no_such_table", "UNKNOWN_TABLE", id="an unknown table"),
        pytest.param("SELECT no_such_fn(1)", "UNKNOWN_FUNCTION", id="an unknown function"),
    ],
)
def test_a_bad_statement_raises_query_error_with_the_engine_message(
    shared_store: Store, sql: str, fragment: str
) -> None:
    with pytest.raises(QueryError, match=fragment) as info:
        shared_store.query(sql)
    assert str(info.value).startswith("Code: ")


def test_a_query_that_fails_mid_way_does_not_break_the_next_one(shared_store: Store) -> None:
    with pytest.raises(QueryError, match="TIMEOUT_EXCEEDED"):
        shared_store.query(
            "SELECT count() FROM numbers(100000000000000) SETTINGS max_execution_time = 0.3"
        )
    assert shared_store.query("SELECT 1 AS x").rows == [(1,)]


def test_sql_text_is_never_formatted_client_side(shared_store: Store) -> None:
    # A literal % with parameters the SQL does not use must reach the engine untouched.
    res = shared_store.query("SELECT 'a%s %(p)s %' AS x", {"p": "unused"})
    assert res.rows == [("a%s %(p)s %",)]


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        pytest.param("cost_usd", "twelve", id="a cost that is not a number"),
        pytest.param("input_tokens", -5, id="a negative token count"),
        pytest.param("trace_id", "not-hex", id="a trace id that is not hex"),
    ],
)
def test_a_bad_value_names_its_column_and_inserts_nothing(
    shared_store: Store, column: str, bad: Any
) -> None:
    good = (BASE, 1, Decimal("0.5"), "ab" * 16)
    row = list(good)
    row[["ts", "input_tokens", "cost_usd", "trace_id"].index(column)] = bad
    with pytest.raises(QueryError, match=column):
        shared_store.insert_rows(
            cv.REQUESTS, ["ts", "input_tokens", "cost_usd", "trace_id"], [good, tuple(row)]
        )
    assert shared_store.query("SELECT count() FROM requests").rows == [(0,)]
