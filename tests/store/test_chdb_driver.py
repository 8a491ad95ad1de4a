"""The embedded driver: round trips, dedup through rollups, migrations, locking, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from collector.records import RequestRecord, as_row, columns
from controlplane.errors import QueryError, SchemaTooNew, StoreError, StoreLocked
from controlplane.store.chdb_driver import ChdbStore
from controlplane.store.migrate import apply_retention, current_version, known_migrations, migrate


def _now() -> datetime:
    # Rows older than the 30-day TTL are dropped at insert: always use recent times.
    return datetime.now(UTC).replace(microsecond=123456)


def _record(**kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        ts=_now(), pool="chat-8b", model="llama", replica="r0", tenant="acme",
        priority="interactive", status="ok", finish_reason="stop",
        trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
        ttft_us=245_000, tpot_us=21_500, e2e_us=4_500_000, queue_us=12_000,
        prefill_us=233_000, decode_us=4_255_000, input_tokens=1200, output_tokens=200,
        cached_tokens=512, output_tokens_per_s=47.0, cost_usd=0.000321,
        attributes={"gen_ai.request.id": "abc"},
    )  # fmt: skip
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_a_request_row_reads_back_with_every_field_intact(store: ChdbStore) -> None:
    rec = _record()
    store.insert_rows("requests", columns(RequestRecord), [as_row(rec)])
    row = store.query(
        "SELECT ts, pool, model, replica, tenant, priority, status, finish_reason, "
        "lower(hex(trace_id)), lower(hex(span_id)), ttft_us, tpot_us, e2e_us, queue_us, "
        "input_tokens, output_tokens, cached_tokens, output_tokens_per_s, cost_usd, attributes "
        "FROM requests"
    ).rows[0]
    assert row[0] == rec.ts
    assert row[1:8] == ("chat-8b", "llama", "r0", "acme", "interactive", "ok", "stop")
    assert row[8:10] == (rec.trace_id, rec.span_id)
    assert row[10:17] == (245_000, 21_500, 4_500_000, 12_000, 1200, 200, 512)
    assert row[17] == pytest.approx(47.0)
    assert row[18] == Decimal("0.000321000")
    assert dict(row[19]) == {"gen_ai.request.id": "abc"}


def test_missing_latencies_are_stored_as_null_not_zero(store: ChdbStore) -> None:
    rec = _record(status="error", error_type="timeout", ttft_us=None, tpot_us=None,
                  output_tokens_per_s=None, trace_id="", span_id="")  # fmt: skip
    store.insert_rows("requests", columns(RequestRecord), [as_row(rec)])
    ttft, err, trace = store.query("SELECT ttft_us, error_type, hex(trace_id) FROM requests").rows[
        0
    ]
    assert ttft is None and err == "timeout" and trace == "0" * 32


def test_a_retried_batch_with_the_same_token_is_counted_once_in_raw_and_rollups(
    store: ChdbStore,
) -> None:
    rows = [as_row(_record(ttft_us=100_000 + i)) for i in range(50)]
    for _ in range(3):
        store.insert_rows("requests", columns(RequestRecord), rows, dedup_token="batch-1")
    store.insert_rows("requests", columns(RequestRecord), rows[:1], dedup_token="batch-2")
    assert store.query("SELECT count() FROM requests").rows[0][0] == 51
    for table in ("requests_1m", "requests_1h", "requests_1m_pool", "requests_1h_pool"):
        assert store.query(f"SELECT sum(requests) FROM {table}").rows[0][0] == 51


def test_rollups_count_errors_and_histogram_only_successful_requests(store: ChdbStore) -> None:
    recs = [_record(ttft_us=250_000), _record(ttft_us=251_000),
            _record(status="error", ttft_us=90_000), _record(ttft_us=None)]  # fmt: skip
    store.insert_rows("requests", columns(RequestRecord), [as_row(r) for r in recs])
    req, err, hist = store.query(
        "SELECT sum(requests), sum(errors), sumMap(ttft_hist) FROM requests_1m"
    ).rows[0]
    assert (req, err) == (4, 1)
    # 250 ms is its own bound; 251 ms rounds up to 260 ms (two significant digits).
    assert dict(hist) == {250_000: 1, 260_000: 1}


def test_insert_df_and_query_df_round_trip(store: ChdbStore) -> None:
    df = pd.DataFrame(
        {
            "ts": pd.to_datetime([_now(), _now()], utc=True),
            "pool": ["a", "b"],
            "replica": ["a-0", "b-0"],
            "up": [True, False],
            "kv_cache_usage": [0.5, None],
        }
    )
    store.insert_df("replica_samples", df)
    out = store.query_df("SELECT pool, up, kv_cache_usage FROM replica_samples ORDER BY pool")
    assert list(out["pool"]) == ["a", "b"]
    assert list(out["up"]) == [True, False]
    assert out["kv_cache_usage"].iloc[0] == pytest.approx(0.5)
    assert pd.isna(out["kv_cache_usage"].iloc[1])


def test_parameters_are_bound_not_formatted(store: ChdbStore) -> None:
    store.insert_rows("requests", ["ts", "pool"], [(_now(), "x' OR 1=1 --")])
    store.insert_rows("requests", ["ts", "pool"], [(_now(), "other")])
    res = store.query("SELECT count() FROM requests WHERE pool = {p:String}", {"p": "x' OR 1=1 --"})
    assert res.rows[0][0] == 1


@pytest.mark.parametrize(
    "table", ["requests; DROP TABLE requests", "1abc", "a-b", ""], ids=lambda t: repr(t)
)
def test_invalid_table_names_are_rejected_before_reaching_the_engine(
    store: ChdbStore, table: str
) -> None:
    with pytest.raises(QueryError, match="invalid table name"):
        store.insert_rows(table, ["ts"], [(_now(),)])


def test_unknown_columns_and_bad_sql_raise_query_error(store: ChdbStore) -> None:
    with pytest.raises(QueryError, match="unknown column 'nope'"):
        store.insert_rows("requests", ["ts", "nope"], [(_now(), 1)])
    with pytest.raises(QueryError, match="UNKNOWN_IDENTIFIER|Unknown expression"):
        store.query("SELECT nope FROM requests")


def test_migrations_are_recorded_once_and_rerunning_is_a_no_op(store: ChdbStore) -> None:
    newest = known_migrations()[-1].version
    assert current_version(store) == newest
    assert migrate(store) == []
    versions = store.query("SELECT version FROM schema_migrations ORDER BY version").rows
    assert [v[0] for v in versions] == [m.version for m in known_migrations()]


def test_a_store_migrated_by_a_newer_governor_refuses_to_start(store: ChdbStore) -> None:
    store.insert_rows(
        "schema_migrations", ["version", "name", "applied_at"], [(9999, "future", _now())]
    )
    with pytest.raises(SchemaTooNew, match="schema version 9999, newer than this Governor"):
        migrate(store)


def test_retention_from_config_changes_the_ttl(store: ChdbStore) -> None:
    apply_retention(store, {"requests": 7})
    ddl = store.query("SHOW CREATE TABLE requests").rows[0][0]
    assert "toIntervalDay(7)" in ddl
    with pytest.raises(QueryError, match="unknown table"):
        apply_retention(store, {"nope": 3})


def test_old_rows_beyond_retention_are_dropped(store: ChdbStore) -> None:
    old = _now() - timedelta(days=45)
    store.insert_rows("requests", ["ts", "pool"], [(old, "a"), (_now(), "a")])
    assert store.query("SELECT count() FROM requests").rows[0][0] == 1


def test_a_second_data_directory_in_one_process_is_refused_clearly(
    store: ChdbStore, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match="one data directory per process"):
        ChdbStore(tmp_path / "other")


def test_another_process_holding_the_directory_gets_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from controlplane.store.chdb_driver import ChdbStore
            s = ChdbStore({str(data)!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        probe = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                from controlplane.errors import StoreLocked
                from controlplane.store.chdb_driver import ChdbStore
                try:
                    ChdbStore({str(data)!r})
                except StoreLocked as e:
                    print("LOCKED", e)
            """)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (
            f"LOCKED data directory {data.resolve()} is in use by another process (pid "
            f"{holder.pid})" in probe.stdout
        )
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()
    assert StoreLocked.__mro__[1] is StoreError


def test_a_query_over_the_timeout_is_stopped_and_the_store_stays_usable(chdb_path: Path) -> None:
    store = ChdbStore(chdb_path, database="t_timeout", query_timeout_s=0.5)
    try:
        with pytest.raises(QueryError, match=r"query timeout \(0.5s\).*TIMEOUT_EXCEEDED"):
            store.query("SELECT count() FROM numbers(100000000000000)")
        assert store.query("SELECT 1").rows == [(1,)]
    finally:
        store.command("DROP DATABASE IF EXISTS t_timeout")
        store.close()


def test_marks_load_in_the_reading_thread_for_every_store_on_the_session(
    store: ChdbStore, chdb_path: Path
) -> None:
    # The first SLO cycle after a start is ~100 ms faster this way (BENCHMARKS.md); a
    # store with its own timeout re-SETs the session and must not lose it.
    other = ChdbStore(chdb_path, database="t_marks", query_timeout_s=5)
    try:
        for s in (store, other, store):
            assert s.query("SELECT getSetting('load_marks_asynchronously')").rows == [(False,)]
    finally:
        other.command("DROP DATABASE IF EXISTS t_marks")
        other.close()


def test_map_and_array_parameters_are_bound_as_literals(store: ChdbStore) -> None:
    res = store.query(
        "SELECT {m:Map(String, String)}['k''1'], {a:Array(String)}[2]",
        {"m": {"k'1": "v'x", "z": "w"}, "a": ["a", "b'c"]},
    )
    assert res.rows == [("v'x", "b'c")]


def test_open_store_applies_retention_per_table_from_config(chdb_path: Path) -> None:
    from controlplane.config import RetentionConfig, StoreConfig
    from controlplane.store import open_store

    cfg = StoreConfig(
        database="t_retention",
        retention=RetentionConfig(requests_days=7, minute_rollups_days=33, rollups_days=90),
    )
    store = open_store(cfg, data_dir=str(chdb_path))
    try:
        ddl = {t: store.query(f"SHOW CREATE TABLE {t}").rows[0][0]
               for t in ("requests", "requests_1m", "requests_1h")}  # fmt: skip
        assert "toIntervalDay(7)" in ddl["requests"]
        assert "toIntervalDay(33)" in ddl["requests_1m"]
        assert "toIntervalDay(90)" in ddl["requests_1h"]
    finally:
        store.command("DROP DATABASE IF EXISTS t_retention")
        store.close()


def test_arrow_string_layouts_from_a_decoder_insert_like_plain_strings(store: ChdbStore) -> None:
    # A columnar decoder may hand over dictionary-encoded, large or view strings; the
    # Arrow-stream insert stores them as the same LowCardinality values.
    import pyarrow as pa

    ts = pa.array([_now()] * 3, pa.timestamp("us", tz="UTC"))
    pools = pa.array(["a", "b", "a"], pa.string())
    for i, layout in enumerate(
        [pools.dictionary_encode(), pools.cast(pa.large_string()), pools.cast(pa.string_view())]
    ):
        data = pa.table({"ts": ts, "pool": layout, "ttft_us": pa.array([1, 2, 3], pa.uint32())})
        store.insert_arrow("requests", data, dedup_token=f"layout-{i}")
    got = store.query(
        "SELECT pool, count(), sum(ttft_us) FROM requests GROUP BY pool ORDER BY pool"
    )
    assert got.rows == [("a", 6, 12), ("b", 3, 6)]
    rolled = store.query("SELECT pool, sum(requests) FROM requests_1h GROUP BY pool ORDER BY pool")
    assert rolled.rows == [("a", 6), ("b", 3)]


def test_a_rejected_arrow_insert_names_the_column_and_leaves_the_store_usable(
    store: ChdbStore,
) -> None:
    import pyarrow as pa

    ts = pa.array([_now()] * 2, pa.timestamp("us", tz="UTC"))
    bad = pa.table({"ts": ts, "input_tokens": ["5", "many"]})  # UInt32 column
    with pytest.raises(QueryError, match="input_tokens"):
        store.insert_arrow("requests", bad)
    assert store.query("SELECT count() FROM requests").rows == [(0,)]
    store.insert_rows("requests", columns(RequestRecord), [as_row(_record())])
    assert store.query("SELECT count() FROM requests_1m").rows == [(1,)]
