"""The spool on its own: encoding, order, crash safety, bounds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.errors import SpoolError
from collector.spool import Batch, DiskSpool, MemorySpool, decode, encode


def batch(i: int, rows: int = 3) -> Batch:
    return Batch(
        "requests",
        ("ts", "span_id", "attributes", "ttft_us", "cost_usd", "ok"),
        [
            (datetime(2026, 11, 22, 1, 0, i % 60, j, tzinfo=UTC), f"{i:08x}{j:08x}",
             {"k": "v", "$t": "not a time"}, None if j else 1500, 0.25 * j, j % 2 == 0)
            for j in range(rows)
        ],
        f"token-{i}",
    )  # fmt: skip


def drain(spool: DiskSpool | MemorySpool) -> list[Batch]:
    out = []
    while (b := spool.peek()) is not None:
        out.append(b)
        spool.pop()
    return out


def test_a_record_decodes_to_the_same_values_and_types() -> None:
    b = batch(7)
    rec = encode(b)
    assert decode(rec[16:]) == b


def test_an_unencodable_value_is_a_spool_error_naming_the_table() -> None:
    bad = Batch("requests", ("x",), [(object(),)], "t")
    with pytest.raises(SpoolError, match="requests"):
        encode(bad)


@pytest.mark.parametrize("kind", ["disk", "memory"], ids=["on disk", "in memory"])
def test_batches_come_back_in_the_order_they_went_in(tmp_path: Path, kind: str) -> None:
    spool = (
        DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=600)
        if kind == "disk"
        else MemorySpool(max_bytes=1 << 20)
    )
    for i in range(20):
        spool.append(batch(i))
    assert spool.batches == 20
    assert [b.token for b in drain(spool)] == [f"token-{i}" for i in range(20)]
    assert spool.batches == 0 and spool.bytes == 0


def test_segments_are_deleted_only_once_every_record_in_them_is_delivered(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=600)
    for i in range(6):
        spool.append(batch(i))
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) >= 2
    first = segments[0]
    spool.peek()
    spool.pop()
    assert first.exists(), "a partly delivered segment must stay on disk"
    drain(spool)
    assert list(tmp_path.glob("*.seg")) == []


def test_a_new_spool_finds_what_a_previous_one_left_and_appends_to_new_segments(
    tmp_path: Path,
) -> None:
    old = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=600)
    for i in range(5):
        old.append(batch(i))
    old.close()
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.seg")}
    new = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=600)
    assert new.batches == 5
    new.append(batch(5))
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, "old segments are never appended to"
    assert [b.token for b in drain(new)] == [f"token-{i}" for i in range(6)]


def test_a_torn_tail_is_detected_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    for i in range(4):
        old.append(batch(i))
    old.close()
    (seg,) = tmp_path.glob("*.seg")
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])  # a crash in the middle of the last write
    corrupt: list[int] = []
    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        new = DiskSpool(tmp_path, max_bytes=1 << 20, on_corrupt=corrupt.append)
    assert [b.token for b in drain(new)] == ["token-0", "token-1", "token-2"]
    assert corrupt == [1]
    assert "torn or corrupt record" in caplog.text and "short payload" in caplog.text


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d, off: d[: off + 20] + bytes([d[off + 20] ^ 0xFF]) + d[off + 21 :], "checksum"),
        (lambda d, off: d[:off] + b"XXXX" + d[off + 4 :], "bad magic"),
        (lambda d, off: d[: off + 5], "short header"),
    ],
    ids=["a flipped payload bit", "an overwritten header", "a cut header"],
)
def test_a_damaged_record_ends_its_segment_and_keeps_the_records_before(
    tmp_path: Path, damage, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    old = DiskSpool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    sizes = []
    for i in range(3):
        before = old.bytes
        old.append(batch(i))
        sizes.append(old.bytes - before)
    old.close()
    (seg,) = tmp_path.glob("*.seg")
    seg.write_bytes(damage(seg.read_bytes(), sizes[0]))  # damage the second record
    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        new = DiskSpool(tmp_path, max_bytes=1 << 20)
    assert [b.token for b in drain(new)] == ["token-0"]
    assert problem in caplog.text


@pytest.mark.parametrize("kind", ["disk", "memory"], ids=["on disk", "in memory"])
def test_when_full_the_oldest_batches_are_dropped_counted_and_logged(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    dropped: list[tuple[int, int]] = []
    size = len(encode(batch(0)))
    limit = size * 10 + size // 2

    def on_drop(b: int, r: int) -> None:
        dropped.append((b, r))

    spool = (
        DiskSpool(tmp_path, max_bytes=limit, segment_bytes=1, on_drop=on_drop)
        if kind == "disk"
        else MemorySpool(max_bytes=limit, on_drop=on_drop)
    )
    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        for i in range(25):
            spool.append(batch(i))
    assert spool.bytes <= limit
    assert sum(b for b, _ in dropped) == 15 and sum(r for _, r in dropped) == 45
    assert [b.token for b in drain(spool)] == [f"token-{i}" for i in range(15, 25)]
    assert "dropped the oldest" in caplog.text


def test_a_batch_larger_than_the_whole_spool_is_dropped_not_kept(tmp_path: Path) -> None:
    dropped: list[tuple[int, int]] = []
    spool = DiskSpool(tmp_path, max_bytes=1024, on_drop=lambda b, r: dropped.append((b, r)))
    spool.append(batch(0, rows=500))
    assert dropped == [(1, 500)] and spool.batches == 0


def test_an_unusable_directory_is_a_spool_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="file/spool"):
        DiskSpool(blocker / "spool")


def test_unexpected_files_in_the_directory_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.seg").write_text("mine")
    (tmp_path / "README").write_text("mine")
    spool = DiskSpool(tmp_path)
    spool.append(batch(1))
    assert (tmp_path / "notes.seg").read_text() == "mine"
    assert [b.token for b in drain(spool)] == ["token-1"]


@pytest.mark.parametrize("kind", ["disk", "memory"], ids=["on disk", "in memory"])
def test_replay_merges_unsent_batches_of_one_table_up_to_the_row_limit(
    tmp_path: Path, kind: str
) -> None:
    spool = DiskSpool(tmp_path) if kind == "disk" else MemorySpool()
    for i in range(5):
        spool.append(batch(i))  # 3 rows each
    spool.append(Batch("gpu_samples", ("ts",), [(None,)], "gpu"))
    spool.append(batch(6))
    groups = []
    while (b := spool.peek(max_rows=7)) is not None:
        groups.append((b.table, len(b.rows)))
        spool.pop()
    assert groups == [("requests", 6), ("requests", 6), ("requests", 3), ("gpu_samples", 1),
                      ("requests", 3)]  # fmt: skip


def test_a_batch_sent_before_is_replayed_alone_under_its_own_token(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.append(batch(0))
    sent = batch(1)
    spool.append(Batch(sent.table, sent.columns, sent.rows, sent.token, attempted=True))
    spool.append(batch(2))
    spool.append(batch(3))
    tokens = []
    while (b := spool.peek(max_rows=100)) is not None:
        tokens.append(b.token)
        spool.pop()
    assert tokens[:2] == ["token-0", "token-1"]
    assert tokens[2].startswith("m") and len(tokens) == 3


def test_a_merged_group_gets_the_same_token_after_a_restart(tmp_path: Path) -> None:
    first = DiskSpool(tmp_path)
    for i in range(4):
        first.append(batch(i))
    before = first.peek(max_rows=100)
    first.close()  # crash before pop: the group is still on disk
    again = DiskSpool(tmp_path)
    after = again.peek(max_rows=100)
    assert before is not None and after is not None
    assert after.token == before.token and after.rows == before.rows
