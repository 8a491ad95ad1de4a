"""The writer's spool: batches kept, in order, while the store cannot take them.

``DiskSpool`` keeps batches in append-only segment files under one directory::

    000000000001.seg  000000000002.seg  ...   (oldest first)

Each record is ``magic | payload length | row count | crc32`` (little endian) followed by
the payload: zlib-compressed JSON (table, columns, dedup token, rows) for row batches, or
an Arrow IPC stream (zstd-compressed buffers; table, token and attempted flag in the
schema metadata) for Arrow batches. An IPC stream starts with 0xFFFFFFFF, which a zlib
stream never does, so old spools stay readable. Every append is
fsync'd before it counts as spooled, and a new segment's directory entry is fsync'd too,
so a crash loses at most the record being written. On open, every segment is scanned: a
torn or corrupt record (short header or payload, wrong magic, crc mismatch) ends that
segment, with a log line and a count; the records before it are kept. A process never
appends to a segment it did not create, so a torn tail is never built upon.

Segments are deleted only once every record in them was delivered. When an append
would exceed ``max_bytes``, the oldest segments are dropped whole (rows counted, logged).

``MemorySpool`` has the same interface and accounting without a directory: the default
when no spool directory is configured (an outage then survives only while the process
lives).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from collector.errors import SpoolError

log = logging.getLogger(__name__)

_MAGIC = b"GVS1"
_HEADER = struct.Struct("<4sIII")  # magic, payload length, rows, crc32(rows || payload)
_SUFFIX = ".seg"


@dataclass(frozen=True)
class Batch:
    """Rows for one table with the dedup token fixed when the batch was formed."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    token: str
    # Sent to the target at least once: it may be in the store already, so it is only
    # ever replayed alone, under its own token.
    attempted: bool = False
    # Set for Arrow batches (``rows`` is then empty): the rows as one typed table.
    arrow: pa.Table | None = None

    @property
    def size(self) -> int:
        """Number of rows, whichever form they are in."""
        return self.arrow.num_rows if self.arrow is not None else len(self.rows)

    def slice(self, start: int, stop: int, token: str) -> Batch:
        """Rows ``start:stop`` as a batch of their own under ``token``."""
        if self.arrow is not None:
            part = self.arrow.slice(start, stop - start)
            return Batch(self.table, self.columns, [], token, arrow=part)
        return Batch(self.table, self.columns, self.rows[start:stop], token)


# Called with (batches, rows) each time the spool drops data to stay within bounds.
DropCallback = Callable[[int, int], None]


class Spool(Protocol):
    @property
    def bytes(self) -> int: ...

    @property
    def batches(self) -> int: ...

    def append(self, batch: Batch) -> None: ...

    def peek(self, max_rows: int = 0) -> Batch | None:
        """The oldest batch; with ``max_rows``, merged with the never-attempted batches
        after it (same table, up to ``max_rows`` rows) under a token derived from theirs."""
        ...

    def pop(self) -> None:
        """Remove what the last ``peek`` returned."""
        ...

    def close(self) -> None: ...


# -- encoding ------------------------------------------------------------------------


def _enc(value: Any) -> Any:
    # Tagged objects keep types JSON lacks; every dict is tagged so none is ambiguous.
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, dict):
        return {"$m": value}
    if isinstance(value, bytes):
        return {"$b": value.hex()}
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if "$t" in value:
            return datetime.fromisoformat(value["$t"])
        if "$m" in value:
            return value["$m"]
        if "$b" in value:
            return bytes.fromhex(value["$b"])
    return value


_IPC_START = b"\xff\xff\xff\xff"
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd" if pa.Codec.is_available("zstd") else None)


def _encode_arrow(batch: Batch) -> bytes:
    assert batch.arrow is not None
    meta = {b"governor.table": batch.table.encode(), b"governor.token": batch.token.encode(),
            b"governor.attempted": b"1" if batch.attempted else b"0"}  # fmt: skip
    table = batch.arrow.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as w:
        w.write_table(table)
    payload: bytes = sink.getvalue().to_pybytes()
    return payload


def _decode_arrow(payload: bytes) -> Batch:
    table = pa.ipc.open_stream(payload).read_all()
    meta = table.schema.metadata or {}
    table = table.replace_schema_metadata(None)
    return Batch(
        meta[b"governor.table"].decode(), tuple(table.column_names), [],
        meta[b"governor.token"].decode(), meta.get(b"governor.attempted") == b"1", arrow=table,
    )  # fmt: skip


def encode(batch: Batch) -> bytes:
    """One framed record: header then compressed payload."""
    if batch.arrow is not None:
        try:
            payload = _encode_arrow(batch)
        except (pa.ArrowException, ValueError) as exc:
            raise SpoolError(f"cannot spool Arrow batch for {batch.table!r}: {exc}") from exc
        return _frame(payload, batch.size)
    body = {
        "t": batch.table,
        "c": list(batch.columns),
        "k": batch.token,
        "a": batch.attempted,
        "r": [[_enc(v) for v in row] for row in batch.rows],
    }
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SpoolError(f"cannot spool batch for {batch.table!r}: {exc}") from exc
    return _frame(zlib.compress(text.encode(), 1), batch.size)


def _frame(payload: bytes, rows: int) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<I", rows)))
    return _HEADER.pack(_MAGIC, len(payload), rows, crc) + payload


def decode(payload: bytes) -> Batch:
    if payload[:4] == _IPC_START:
        try:
            return _decode_arrow(payload)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            raise SpoolError(f"undecodable spool record: {exc}") from exc
    try:
        body = json.loads(zlib.decompress(payload))
        rows = [tuple(_dec(v) for v in row) for row in body["r"]]
        return Batch(body["t"], tuple(body["c"]), rows, body["k"], bool(body.get("a")))
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise SpoolError(f"undecodable spool record: {exc}") from exc


def merge(group: list[Batch]) -> Batch:
    """One insert for several spooled batches; the token depends only on theirs, so the
    same group always gets the same token and a repeated insert stays a no-op."""
    if len(group) == 1:
        return group[0]
    digest = hashlib.sha256("\n".join(b.token for b in group).encode()).hexdigest()[:32]
    if group[0].arrow is not None:
        tables = [b.arrow for b in group if b.arrow is not None]
        return Batch(group[0].table, group[0].columns, [], f"m{digest}",
                     arrow=pa.concat_tables(tables))  # fmt: skip
    rows = [r for b in group for r in b.rows]
    return Batch(group[0].table, group[0].columns, rows, f"m{digest}")


def _joins(group: list[Batch], rows: int, b: Batch, max_rows: int) -> bool:
    if not group:
        return True
    head = group[0]
    return (
        not head.attempted and not b.attempted and b.table == head.table
        and b.columns == head.columns and rows + b.size <= max_rows
        and (b.arrow is None) == (head.arrow is None)
        and (b.arrow is None or head.arrow is None or b.arrow.schema.equals(head.arrow.schema))
    )  # fmt: skip


# -- disk ----------------------------------------------------------------------------


@dataclass
class _Segment:
    path: Path
    size: int = 0
    records: deque[tuple[int, int, int]] = field(default_factory=deque)  # offset, len, rows
    file: Any = None  # open for append while active

    @property
    def rows(self) -> int:
        return sum(r[2] for r in self.records)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskSpool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int | None = None,
        on_drop: DropCallback | None = None,
        on_corrupt: Callable[[int], None] | None = None,
    ) -> None:
        if max_bytes < 1024:
            raise SpoolError(f"spool max_bytes must be at least 1024, got {max_bytes}")
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.dir}: {exc}") from exc
        self.max_bytes = max_bytes
        # Dropping works on whole segments: keep each a small share of the bound.
        self.segment_bytes = segment_bytes or min(16 << 20, max_bytes // 8)
        self._on_drop = on_drop or (lambda b, r: None)
        self._on_corrupt = on_corrupt or (lambda n: None)
        self._segments: deque[_Segment] = deque()
        # Totals kept as plain ints so other threads can read them while the owner mutates.
        self._bytes = 0
        self._batches = 0
        self._peeked = 0
        self._next_seq = 1
        self._scan()

    # -- open ---------------------------------------------------------------------
    def _scan(self) -> None:
        paths = sorted(p for p in self.dir.iterdir() if p.suffix == _SUFFIX)
        for path in paths:
            try:
                seq = int(path.stem)
            except ValueError:
                log.warning("spool: ignoring unexpected file %s", path)
                continue
            self._next_seq = max(self._next_seq, seq + 1)
            seg = self._read_index(path)
            if seg.records:
                self._segments.append(seg)
                self._bytes += seg.size
                self._batches += len(seg.records)
            else:
                path.unlink(missing_ok=True)
        if self._segments:
            log.info(
                "spool: found %d batches (%d bytes) left by a previous run in %s",
                self.batches, self.bytes, self.dir,
            )  # fmt: skip

    def _read_index(self, path: Path) -> _Segment:
        data = path.read_bytes()
        seg = _Segment(path, size=len(data))
        off = 0
        while off < len(data):
            problem = ""
            if len(data) - off < _HEADER.size:
                problem = "short header"
            else:
                magic, length, rows, crc = _HEADER.unpack_from(data, off)
                end = off + _HEADER.size + length
                if magic != _MAGIC:
                    problem = "bad magic"
                elif end > len(data):
                    problem = "short payload"
                else:
                    payload = data[off + _HEADER.size : end]
                    if zlib.crc32(payload, zlib.crc32(struct.pack("<I", rows))) != crc:
                        problem = "checksum mismatch"
            if problem:
                log.warning(
                    "spool: %s: torn or corrupt record at offset %d (%s); skipping the "
                    "last %d bytes of this segment",
                    path.name, off, problem, len(data) - off,
                )  # fmt: skip
                self._on_corrupt(1)
                break
            seg.records.append((off + _HEADER.size, length, rows))
            off = end
        return seg

    # -- Spool --------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def batches(self) -> int:
        return self._batches

    def append(self, batch: Batch) -> None:
        record = encode(batch)
        if len(record) > self.max_bytes:
            log.error(
                "spool: dropping a batch of %d rows for %s: %d bytes exceed spool_max_bytes %d",
                batch.size, batch.table, len(record), self.max_bytes,
            )  # fmt: skip
            self._on_drop(1, batch.size)
            return
        self._make_room(len(record))
        seg = self._active()
        try:
            seg.file.write(record)
            seg.file.flush()
            os.fsync(seg.file.fileno())
        except OSError as exc:
            raise SpoolError(f"cannot write spool segment {seg.path}: {exc}") from exc
        seg.records.append((seg.size + _HEADER.size, len(record) - _HEADER.size, batch.size))
        seg.size += len(record)
        self._bytes += len(record)
        self._batches += 1
        if seg.size >= self.segment_bytes:
            self._seal(seg)

    def peek(self, max_rows: int = 0) -> Batch | None:
        while self._segments:
            seg = self._segments[0]
            if not seg.records:
                self._delete_head()
                continue
            # Replay reads sealed segments only: their content is fixed, so grouping from
            # the segment's start gives the same groups (and tokens) after a restart.
            self._seal(seg)
            group: list[Batch] = []
            rows = 0
            try:
                with open(seg.path, "rb") as f:
                    for off, length, _ in seg.records:
                        f.seek(off)
                        b = decode(f.read(length))
                        if not _joins(group, rows, b, max_rows):
                            break
                        group.append(b)
                        rows += b.size
                        if not max_rows:
                            break
            except (OSError, SpoolError) as exc:
                if not group:
                    # Checksummed at scan/append, so this is a disk fault: skip, never loop.
                    log.error("spool: unreadable record in %s: %s; skipped", seg.path.name, exc)
                    self._on_corrupt(1)
                    seg.records.popleft()
                    self._batches -= 1
                    continue
            self._peeked = len(group)
            return merge(group)
        return None

    def pop(self) -> None:
        n, self._peeked = max(self._peeked, 1), 0
        for _ in range(n):
            if not self._segments or not self._segments[0].records:
                return
            seg = self._segments[0]
            seg.records.popleft()
            self._batches -= 1
            if not seg.records:
                self._delete_head()

    def close(self) -> None:
        for seg in self._segments:
            self._seal(seg)

    # -- internals ----------------------------------------------------------------
    def _active(self) -> _Segment:
        if self._segments and self._segments[-1].file is not None:
            return self._segments[-1]
        path = self.dir / f"{self._next_seq:012d}{_SUFFIX}"
        self._next_seq += 1
        try:
            f = open(path, "xb")  # noqa: SIM115 - kept open across appends, closed in _seal
            _fsync_dir(self.dir)
        except OSError as exc:
            raise SpoolError(f"cannot create spool segment {path}: {exc}") from exc
        seg = _Segment(path, file=f)
        self._segments.append(seg)
        return seg

    def _seal(self, seg: _Segment) -> None:
        if seg.file is not None:
            seg.file.close()
            seg.file = None

    def _delete_head(self) -> None:
        seg = self._segments.popleft()
        self._seal(seg)
        self._bytes -= seg.size
        self._batches -= len(seg.records)
        seg.path.unlink(missing_ok=True)

    def _make_room(self, need: int) -> None:
        dropped_batches = dropped_rows = 0
        while self._segments and self.bytes + need > self.max_bytes:
            head = self._segments[0]
            dropped_batches += len(head.records)
            dropped_rows += head.rows
            self._delete_head()
        if dropped_batches:
            log.warning(
                "spool full (%d bytes max): dropped the oldest %d batches (%d rows)",
                self.max_bytes, dropped_batches, dropped_rows,
            )  # fmt: skip
            self._on_drop(dropped_batches, dropped_rows)


# -- memory --------------------------------------------------------------------------


class MemorySpool:
    """Same bounds and drop-oldest rule as ``DiskSpool``, held in memory."""

    def __init__(self, *, max_bytes: int = 256 * 1024 * 1024, on_drop: DropCallback | None = None):
        self.max_bytes = max_bytes
        self._on_drop = on_drop or (lambda b, r: None)
        self._items: deque[tuple[Batch, int]] = deque()
        self._bytes = 0
        self._peeked = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def batches(self) -> int:
        return len(self._items)

    def append(self, batch: Batch) -> None:
        size = len(encode(batch))  # same accounting as on disk
        dropped_b = dropped_r = 0
        while self._items and self._bytes + size > self.max_bytes:
            old, old_size = self._items.popleft()
            self._bytes -= old_size
            dropped_b, dropped_r = dropped_b + 1, dropped_r + old.size
        if size > self.max_bytes:
            dropped_b, dropped_r = dropped_b + 1, dropped_r + batch.size
        else:
            self._items.append((batch, size))
            self._bytes += size
        if dropped_b:
            log.warning(
                "memory spool full (%d bytes max): dropped the oldest %d batches (%d rows)",
                self.max_bytes, dropped_b, dropped_r,
            )  # fmt: skip
            self._on_drop(dropped_b, dropped_r)

    def peek(self, max_rows: int = 0) -> Batch | None:
        group: list[Batch] = []
        rows = 0
        for b, _ in self._items:
            if not _joins(group, rows, b, max_rows):
                break
            group.append(b)
            rows += b.size
            if not max_rows:
                break
        self._peeked = len(group)
        return merge(group) if group else None

    def pop(self) -> None:
        n, self._peeked = max(self._peeked, 1), 0
        for _ in range(min(n, len(self._items))):
            _, size = self._items.popleft()
            self._bytes -= size

    def close(self) -> None:
        pass
