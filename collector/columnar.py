"""OTLP protobuf bodies -> ``requests`` rows as one Arrow table, without per-span Python work.

The fast path of the OTLP receiver. ``collector._otlpcols`` (C) walks the protobuf wire
format and returns per-span columns: times, kind, status, ids, and for each attribute key
the mapping reads (``genai.wanted_keys``) a typed value. Its kernel (``_otlpmap.c``)
applies ``collector.genai.map_span``'s per-span rules in one pass over those records.
This module then prices the rows per distinct pool or model with numpy
(``collector.pricing.Pricer``'s rules), applies the trace-id policy, and builds the table
with the ``requests`` column types from the kernel's buffers.

Exactness rule: anything the fast path does not handle is sent to the reference code, so
results, errors and messages are the reference's:

* the whole body, when the C decoder does not accept it (malformed, unusual encodings:
  see ``_otlpcols.c``), or when the pricer is not a plain ``Pricer``;
* one span, when one of its values is unusual: a number sent as a string or bool,
  negative, NaN/inf or out of range, a non-string where text is read, an array other
  than a non-empty list of strings, a start time the store cannot hold. That span is
  decoded by ``collector.otlp.decode_protobuf`` and mapped by ``map_span``.

``tests/collector/test_columnar.py`` checks, with generated spans of every shape, that
both paths give identical tables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from collector import genai as g
from collector.errors import SpanMappingError
from collector.exemplars import TraceIdPolicy
from collector.genai import SPAN_KINDS, AttributeMapping, Pricer, SpanView, map_span
from collector.records import RequestRecord, columns

log = logging.getLogger(__name__)

try:
    from collector import _otlpcols
except ImportError:  # not compiled: the receiver uses the reference path
    _otlpcols = None  # type: ignore[assignment]

AVAILABLE = _otlpcols is not None

TABLE = "requests"
# The Arrow types both store drivers insert into the ``requests`` columns
# (``controlplane.store.columns.arrow_type`` of m0001's column types).
_U32 = pa.uint32()
_TS = pa.timestamp("us", tz="UTC")  # pa.array(values, _TS) costs ~140 us a call
SCHEMA = pa.schema([
    ("ts", _TS), ("pool", pa.string()), ("model", pa.string()),
    ("replica", pa.string()), ("tenant", pa.string()), ("priority", pa.string()),
    ("status", pa.string()), ("error_type", pa.string()), ("finish_reason", pa.string()),
    ("trace_id", pa.binary(16)), ("span_id", pa.binary(8)),
    ("ttft_us", _U32), ("tpot_us", _U32), ("e2e_us", _U32), ("queue_us", _U32),
    ("prefill_us", _U32), ("decode_us", _U32), ("input_tokens", _U32),
    ("output_tokens", _U32), ("cached_tokens", _U32), ("output_tokens_per_s", pa.float32()),
    ("cost_usd", pa.decimal128(18, 9)), ("attributes", pa.map_(pa.string(), pa.string())),
])  # fmt: skip
assert SCHEMA.names == columns(RequestRecord)

# Record layouts of _otlpcols.c (SpanRec, AttrRec).
SPAN_DTYPE = np.dtype({
    "names": ["start", "end", "kind", "status", "res", "vllm", "trace_len", "span_len",
              "trace", "span"],
    "formats": ["<u8", "<u8", "<i4", "<i4", "<i4", "u1", "u1", "u1", ("u1", 16), ("u1", 8)],
    "offsets": [0, 8, 16, 20, 24, 28, 29, 30, 32, 48],
    "itemsize": 56,
})  # fmt: skip
ATTR_DTYPE = np.dtype({
    "names": ["val", "code", "code2", "type"],
    "formats": ["<i8", "<i4", "<i4", "u1"],
    "offsets": [0, 8, 12, 16],
    "itemsize": 24,
})  # fmt: skip
# _otlpcols.h's OutRec: one span's results from the mapping kernel.
_I8, _FLAG = "<i8", "u1"
OUT_DTYPE = np.dtype({
    "names": ["ttft_us", "tpot_us", "e2e_us", "queue_us", "prefill_us", "decode_us",
              "input", "output", "cached", "usage", "tps",
              "error", "finish", "model", "pool", "replica", "tenant", "priority",
              "mapped", "ref", "failed", "has_ttft", "has_tpot", "has_queue", "has_prefill",
              "has_decode", "has_tps", "has_usage"],
    "formats": [_I8] * 9 + ["<f8", "<f4"] + ["<i4"] * 7 + [_FLAG] * 10,
    "offsets": [8 * i for i in range(10)] + [80] + [84 + 4 * i for i in range(7)]
               + [112 + i for i in range(10)],
    "itemsize": 128,
})  # fmt: skip

Mask = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class ColumnarResult:
    """Rows of one export request, and what the mapping said about the rest."""

    table: pa.Table
    total: int  # spans in the request
    rejected: int = 0
    problems: list[str] = field(default_factory=list)  # first few rejection messages
    reference_spans: int = 0  # spans mapped by the reference code (unusual values)
    unstored: int = 0  # mapped rows left out of the table: their cost does not fit the store

    @property
    def accepted(self) -> int:
        return int(self.table.num_rows) + self.unstored


class _Fallback(Exception):
    """The body must go through the reference path as a whole."""


class ColumnarMapper:
    """Decode + map + price one protobuf body into a ``requests`` Arrow table."""

    def __init__(
        self,
        mapping: AttributeMapping | None = None,
        pricer: Pricer | None = None,
        trace_ids: TraceIdPolicy | None = None,
        *,
        max_quoted: int = 3,
    ) -> None:
        if _otlpcols is None:
            raise ImportError("collector._otlpcols is not built")
        self.mapping = m = mapping or AttributeMapping()
        self.pricer = pricer
        self.trace_ids = trace_ids if trace_ids is not None and trace_ids.mode != "all" else None
        self.max_quoted = max_quoted
        self.wanted = g.wanted_keys(m)
        self.keys = tuple(sorted(self.wanted))
        if len(self.keys) > _otlpcols.MAX_KEYS:
            raise ValueError(
                f"the mapping reads {len(self.keys)} attribute keys; the columnar decoder "
                f"takes at most {_otlpcols.MAX_KEYS}"
            )
        self._k = {k: i for i, k in enumerate(self.keys)}
        self._markers = tuple(self._k[k] for k in (g.OPERATION, g.SYSTEM, g.LAT_E2E))
        self._keep = list(dict.fromkeys(m.keep_attributes))
        # Pricing is vectorized for the shipped Pricer only; another pricer is called per
        # record by the reference path.
        from collector.pricing import Pricer as PlainPricer

        self._vector_pricer = pricer is None or type(pricer) is PlainPricer
        extras = ["_OTHER", m.default_pool, *SPAN_KINDS, "ok", "error", "span.kind"]
        extras += sorted(set(m.pool_by_model.values())) + self._keep
        self._extras = list(dict.fromkeys(extras))
        # Indexes after a body's decoded strings, where _Body appends the extras.
        self._extra_at = {e: i for i, e in enumerate(self._extras)}
        self._pool_by_model = {
            model: self._extra_at[pool] for model, pool in m.pool_by_model.items() if pool
        }
        # The attributes map's key names: kept keys, then "span.kind" (after a body's strings).
        self._kept_names = np.array(
            [self._extra_at[key] for key in [*self._keep, "span.kind"]], dtype=np.int32
        )
        self._plan = self._kernel_plan(m)
        encoded = [e.encode() for e in self._extras]
        self._extras_data = b"".join(encoded)
        self._extras_ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def _kernel_plan(self, m: AttributeMapping) -> bytes:
        """The key indexes ``_otlpcols.map`` reads for each role (see ``_otlpmap.c``)."""
        k = self._k
        plan = [*self._markers, k.get("service.name", -1), k.get("span.kind", -1)]
        plan += [k in m.span_kinds for k in SPAN_KINDS] + [False]
        plan += [self._extra_at[kind] for kind in SPAN_KINDS]
        roles: tuple[Sequence[str], ...] = (
            (g.LAT_TTFT, g.TIME_TO_FIRST_CHUNK, g.SERVER_TTFT), (g.LAT_QUEUE,),
            (g.LAT_PREFILL,), (g.LAT_DECODE,), (g.INPUT_TOKENS, g.PROMPT_TOKENS),
            (g.OUTPUT_TOKENS, g.COMPLETION_TOKENS), (g.CACHE_READ, g.CACHE_READ_OLD),
            (g.USAGE_COST,), (g.ERROR_TYPE,), (g.FINISH_REASONS,),
            m.model_keys, m.pool_keys, m.replica_keys, m.tenant_keys, m.priority_keys,
            self._keep,
        )  # fmt: skip
        for keys in roles:
            plan += [len(keys), *(k[key] for key in keys)]
        return np.array(plan, dtype=np.int32).tobytes()

    # -- public ------------------------------------------------------------------------
    def map(self, raw: bytes) -> ColumnarResult | None:
        """The rows of ``raw``; None when the body needs the reference path as a whole."""
        assert _otlpcols is not None
        out = _otlpcols.decode(raw, self.keys, self._markers, g.VLLM_SPAN)
        if out is None or not self._vector_pricer:
            return None
        total, n, span_buf, _, res_buf, attr_buf, strings, str_offsets, str_data = out
        if n == 0:
            return ColumnarResult(SCHEMA.empty_table(), total)
        spans = np.frombuffer(span_buf, dtype=SPAN_DTYPE)
        attrs = np.frombuffer(attr_buf, dtype=ATTR_DTYPE).reshape(n, len(self.keys))
        offsets = np.frombuffer(str_offsets, dtype=np.int32)
        if int(offsets[-1]) + len(self._extras_data) > 2**31 - 1:
            return None
        blob = (
            np.concatenate([offsets, (offsets[-1] + self._extras_ends).astype(np.int32)]),
            str_data + self._extras_data,
        )
        try:
            return _Body(self, raw, spans, attrs, res_buf, strings, blob, total).run()
        except _Fallback:
            return None


class _Body:
    """One body's columns and the mapping over them."""

    def __init__(
        self,
        mapper: ColumnarMapper,
        raw: bytes,
        spans: npt.NDArray[Any],
        attrs: npt.NDArray[Any],
        res_buf: bytes,
        strings: list[str],
        blob: tuple[npt.NDArray[np.int32], bytes],
        total: int,
    ) -> None:
        self.mp = mapper
        self.raw = raw
        self.spans = spans
        self.attrs = attrs
        self.res_buf = res_buf
        self.n = len(spans)
        self.total = total
        self.strings = strings
        self.nstr = len(strings)
        strings.extend(mapper._extras)
        self.extra = {s: self.nstr + i for s, i in mapper._extra_at.items()}
        self.blob_offsets = blob[0].tobytes()
        self.blob_data = blob[1]

    def strs(self, codes: npt.NDArray[Any]) -> pa.Array:
        """The string column of ``codes`` (built in C, no Python object per value)."""
        assert _otlpcols is not None
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        offs, data = _otlpcols.gather(self.blob_offsets, self.blob_data, codes)
        return pa.StringArray.from_buffers(len(codes), pa.py_buffer(offs), pa.py_buffer(data))

    # -- mapping ----------------------------------------------------------------------
    def run(self) -> ColumnarResult:
        """``map_span``'s rules (``_otlpmap.c``), then prices, ids, attributes, the table."""
        assert _otlpcols is not None
        mp = self.mp
        out, kept = _otlpcols.map(
            self.spans, self.attrs, self.res_buf, len(mp.keys), mp._plan,
            self.strings, self.nstr, g.NON_INFERENCE_OPERATIONS, mp._pool_by_model,
            mp._extra_at[mp.mapping.default_pool], mp._extra_at["_OTHER"],
        )  # fmt: skip
        o = np.frombuffer(out, dtype=OUT_DTYPE)

        def flag(name: str) -> Mask:
            return o[name].view(np.bool_)

        self.ref = o["ref"].astype(bool)  # spans the reference code maps
        spans = self.spans
        start = spans["start"]
        failed = flag("failed")
        has_ttft, has_tpot, has_tps = flag("has_ttft"), flag("has_tpot"), flag("has_tps")
        has_queue, has_prefill = flag("has_queue"), flag("has_prefill")
        has_decode = flag("has_decode")
        ttft_us, e2e_us = o["ttft_us"], o["e2e_us"]
        pool, model, replica = o["pool"], o["model"], o["replica"]

        cost = self._cost(pool, replica, model, o["input"], o["output"], o["cached"],
                          ttft_us, has_ttft, e2e_us, o["queue_us"], has_queue,
                          o["prefill_us"], has_prefill, o["decode_us"], has_decode)  # fmt: skip
        cost = np.where((cost == 0.0) & flag("has_usage"), o["usage"], cost)

        ids = self._ids(failed, ttft_us, has_ttft, e2e_us)

        mapped = flag("mapped")
        fast = mapped & ~self.ref
        ref_idx = np.flatnonzero(mapped & self.ref)
        unstorable = fast & ~(cost < MAX_COST)
        unstored = int(unstorable.sum())
        if unstored:
            _log_unstorable(unstored)
            fast &= ~unstorable
        rows = np.flatnonzero(fast)
        attributes = self._attributes(kept, rows)

        def s(codes: npt.NDArray[Any]) -> pa.Array:
            return self.strs(codes[rows])

        def u32(name: str, present: Mask | None = None) -> pa.Array:
            return _nullable(o[name][rows].astype(np.uint32), _U32, present, rows)

        trace, span_id = ids
        table = pa.Table.from_arrays(
            [
                _nullable((start[rows] // np.uint64(1000)).astype(np.int64), _TS, None, rows),
                s(pool), s(model), s(replica), s(o["tenant"]), s(o["priority"]),
                s(np.where(failed, self.extra["error"], self.extra["ok"])),
                s(o["error"]), s(o["finish"]),
                _fixed(trace[rows], 16), _fixed(span_id[rows], 8),
                u32("ttft_us", has_ttft), u32("tpot_us", has_tpot), u32("e2e_us"),
                u32("queue_us", has_queue), u32("prefill_us", has_prefill),
                u32("decode_us", has_decode),
                u32("input"), u32("output"), u32("cached"),
                _nullable(o["tps"][rows], pa.float32(), has_tps, rows),
                pc.cast(pa.array(cost[rows], pa.float64()), SCHEMA.field("cost_usd").type),
                attributes,
            ],
            schema=SCHEMA,
        )  # fmt: skip
        result = ColumnarResult(table, self.total, unstored=unstored)
        if len(ref_idx):
            self._reference(result, ref_idx, rows)
        return result

    def _cost(
        self,
        pool: npt.NDArray[np.int32],
        replica: npt.NDArray[np.int32],
        model: npt.NDArray[np.int32],
        inp: I64,
        out: I64,
        cached: I64,
        ttft_us: I64,
        has_ttft: Mask,
        e2e_us: I64,
        queue_us: I64,
        has_queue: Mask,
        prefill_us: I64,
        has_prefill: Mask,
        decode_us: I64,
        has_decode: Mask,
    ) -> F64:
        """``Pricer.request_cost`` per row, computed once per distinct pool or model."""
        pricer = self.mp.pricer
        cost = np.zeros(self.n)
        if pricer is None:
            return cost
        from collector.pricing import Pricer as PlainPricer

        assert isinstance(pricer, PlainPricer)
        rates: dict[int, float] = {}
        for c in np.unique(pool):
            price = pricer.pools.get(self.strings[int(c)])
            if price is not None:
                rates[int(c)] = price.replica_usd_per_s
        gpu = np.zeros(self.n, dtype=bool)
        for c in rates:  # a few pools: cheaper than np.isin
            gpu |= pool == c
        if gpu.any():
            # phase_seconds: prefill from TTFT - queue, decode from E2E - TTFT when absent.
            pre = np.where(
                has_prefill, prefill_us,
                np.where(has_ttft, np.maximum(ttft_us - np.where(has_queue, queue_us, 0), 0), 0),
            )  # fmt: skip
            dec = np.where(
                has_decode, decode_us, np.where(has_ttft, np.maximum(e2e_us - ttft_us, 0), 0)
            )
            share = np.zeros(self.n)
            conc_fn = pricer._concurrency
            pair = (pool.astype(np.int64) << 32) | replica.astype(np.int64)
            for p in np.unique(pair[gpu]).tolist():
                pc_, rc = p >> 32, p & 0xFFFFFFFF
                sel = gpu & (pair == p)
                usd = rates[int(pc_)]
                try:
                    conc = (
                        conc_fn(self.strings[int(pc_)], self.strings[int(rc)]) if conc_fn else None
                    )
                    share[sel] = usd / max(conc or 1.0, 1.0)
                except Exception:  # the reference records the pricing error on the row
                    self.ref |= sel
            pre_s = pre.astype(np.float64) / 1e6
            dec_s = dec.astype(np.float64) / 1e6
            cost = np.where(gpu, pre_s * share + dec_s * share, cost)
        api = ~gpu & (model != 0)
        if api.any():
            rin = np.zeros(self.n)
            rout = np.zeros(self.n)
            rcached = np.zeros(self.n)
            priced = np.zeros(self.n, dtype=bool)
            for c in np.unique(model[api]):
                mprice = pricer.price_for(self.strings[int(c)])
                if mprice is None:
                    continue
                sel = api & (model == c)
                priced |= sel
                rin[sel] = mprice.input_per_mtok
                rout[sel] = mprice.output_per_mtok
                cr = mprice.cached_input_per_mtok
                rcached[sel] = mprice.input_per_mtok if cr is None else cr
            if priced.any():
                cached_c = np.minimum(np.maximum(cached, 0), np.maximum(inp, 0))
                in_usd = (
                    (inp - cached_c).astype(np.float64) * rin
                    + cached_c.astype(np.float64) * rcached
                ) / 1e6
                out_usd = out.astype(np.float64) * rout / 1e6
                cost = np.where(priced, in_usd + out_usd, cost)
        return cost

    def _ids(
        self, failed: Mask, ttft_us: I64, has_ttft: Mask, e2e_us: I64
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        trace = np.ascontiguousarray(self.spans["trace"])
        span = np.ascontiguousarray(self.spans["span"])
        pol = self.mp.trace_ids
        if pol is None:
            return trace, span
        has_trace = self.spans["trace_len"] == 16
        if pol.mode == "none":
            keep = np.zeros(self.n, dtype=bool)
        else:
            top = trace[:, :4].astype(np.uint64)
            bucket = ((top[:, 0] << 24) | (top[:, 1] << 16) | (top[:, 2] << 8) | top[:, 3]).astype(
                np.float64
            ) / 0xFFFFFFFF
            slow = (np.where(has_ttft, ttft_us, 0) >= pol.slow_ttft_us) | (
                e2e_us >= pol.slow_e2e_us
            )
            keep = has_trace & (failed | slow | (bucket < pol.sample_ratio))
        trace = trace.copy()
        span = span.copy()
        trace[~keep] = 0
        span[~keep] = 0
        return trace, span

    def _attributes(self, kept: bytes, rows: npt.NDArray[Any]) -> pa.Array:
        """The ``attributes`` map column of ``rows`` (kept codes from the kernel)."""
        assert _otlpcols is not None
        names = self.mp._kept_names + np.int32(self.nstr)
        offs, koffs, kdata, voffs, vdata = _otlpcols.attr_map(
            self.blob_offsets, self.blob_data, kept, len(names), names,
            np.ascontiguousarray(rows, dtype=np.int64),
        )  # fmt: skip
        n = len(rows)
        entries = len(koffs) // 4 - 1
        keys = pa.StringArray.from_buffers(entries, pa.py_buffer(koffs), pa.py_buffer(kdata))
        values = pa.StringArray.from_buffers(entries, pa.py_buffer(voffs), pa.py_buffer(vdata))
        offsets = pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(offs)])
        return pa.MapArray.from_arrays(offsets, keys, values)

    def _reference(self, result: ColumnarResult, ref_idx: npt.NDArray[Any], rows: Any) -> None:
        """Map ``ref_idx`` spans with ``map_span`` and merge them in span order."""
        from collector.otlp import decode_protobuf

        result.reference_spans = len(ref_idx)
        views = decode_protobuf(self.raw, self.mp.wanted).spans
        if len(views) != self.n:  # cannot happen: both decoders pick the same candidates
            raise _Fallback()
        records: list[RequestRecord] = []
        order: list[int] = []
        unstorable = 0
        for i in ref_idx:
            view = views[int(i)]
            rec = _map_one(view, self.mp, result)
            if rec is not None and not rec.cost_usd < MAX_COST:
                unstorable += 1
            elif rec is not None:
                records.append(rec)
                order.append(int(i))
        if unstorable:
            _log_unstorable(unstorable)
            result.unstored += unstorable
        if not records:
            return
        extra = records_table(records)
        table = pa.concat_tables([result.table, extra])
        positions = np.concatenate([rows, np.array(order, dtype=np.int64)])
        result.table = table.take(pa.array(np.argsort(positions, kind="stable")))


# cost_usd is Decimal64(9): 18 digits, 9 after the point. A larger cost cannot be stored;
# the per-record path accepted such a row and the writer dead-lettered it when the insert
# failed. Here it is left out of the table with the same outcome: accepted, logged, not
# stored.
MAX_COST = 1e9


def _log_unstorable(n: int) -> None:
    log.error(
        "OTLP ingest: %d row(s) not stored: cost_usd of %.0f USD or more does not fit the "
        "store's Decimal64(9) column", n, MAX_COST,
    )  # fmt: skip


def _map_one(view: SpanView, mp: ColumnarMapper, result: ColumnarResult) -> RequestRecord | None:
    """``OtlpIngest``'s per-span handling, for one span on the reference path."""
    try:
        rec = map_span(view, mp.mapping, mp.pricer)
    except SpanMappingError as exc:
        result.rejected += 1
        if len(result.problems) < mp.max_quoted:
            result.problems.append(f"span {view.span_id or '?'} ({view.name}): {exc}")
        return None
    except Exception:  # a mapping bug must cost one span, not the whole request
        log.exception("OTLP ingest: mapping span %r failed", view.name)
        result.rejected += 1
        if len(result.problems) < mp.max_quoted:
            result.problems.append(f"span {view.span_id or '?'} ({view.name}): internal error")
        return None
    if rec is not None and mp.trace_ids is not None:
        rec = mp.trace_ids.apply(rec)
    return rec


def _nullable(
    values: npt.NDArray[Any], typ: pa.DataType, present: Mask | None, rows: npt.NDArray[Any]
) -> pa.Array:
    """A primitive Arrow array over ``values`` with a validity bitmap from ``present``."""
    valid = None if present is None else present[rows]
    if valid is None or valid.all():
        return pa.Array.from_buffers(typ, len(values), [None, pa.py_buffer(values)])
    bitmap = np.packbits(valid, bitorder="little")
    nulls = len(valid) - int(np.count_nonzero(valid))
    return pa.Array.from_buffers(
        typ, len(values), [pa.py_buffer(bitmap), pa.py_buffer(values)], null_count=nulls
    )


def _fixed(data: npt.NDArray[np.uint8], width: int) -> pa.Array:
    buf = pa.py_buffer(np.ascontiguousarray(data).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(data), [None, buf])


def records_table(records: Sequence[RequestRecord]) -> pa.Table:
    """``RequestRecord`` s as a ``requests`` Arrow table (same types as the fast path)."""
    zero16, zero8 = b"\0" * 16, b"\0" * 8
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for r in records:
        for name in SCHEMA.names:
            cols[name].append(getattr(r, name))
    cols["trace_id"] = [
        bytes.fromhex(v).rjust(16, b"\0") if v else zero16 for v in cols["trace_id"]
    ]
    cols["span_id"] = [bytes.fromhex(v).rjust(8, b"\0") if v else zero8 for v in cols["span_id"]]
    cols["cost_usd"] = [float(v) for v in cols["cost_usd"]]
    cols["attributes"] = [list(v.items()) for v in cols["attributes"]]
    arrays = []
    for f in SCHEMA:
        if f.name == "cost_usd":
            arrays.append(pc.cast(pa.array(cols[f.name], pa.float64()), f.type))
        else:
            arrays.append(pa.array(cols[f.name], f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


__all__ = [
    "AVAILABLE",
    "SCHEMA",
    "TABLE",
    "ColumnarMapper",
    "ColumnarResult",
    "records_table",
]
