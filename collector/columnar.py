"""OTLP protobuf bodies -> ``requests`` rows as one Arrow table, without per-span Python work.

The fast path of the OTLP receiver. ``collector._otlpcols`` (C) walks the protobuf wire
format and returns per-span columns: times, kind, status, ids, and for each attribute key
the mapping reads (``genai.wanted_keys``) a typed value. This module then applies
``collector.genai.map_span``'s rules with numpy over whole columns, prices the rows per
distinct pool or model (``collector.pricing.Pricer``'s rules), applies the trace-id
policy, and builds the table with the ``requests`` column types.

Exactness rule: anything the vectorized code does not handle is sent to the reference
code, so results, errors and messages are the reference's:

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
from collections.abc import Callable, Sequence
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
SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", tz="UTC")), ("pool", pa.string()), ("model", pa.string()),
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
T_ABSENT, T_STR, T_INT, T_DBL, T_BOOL, T_STRARR, T_OTHER = range(7)

_STATUS_ERROR = 2
_U32MAX = 2**32 - 1
_MAX_SECONDS = 1e9  # larger durations are left to the reference (it saturates or fails)
_MAX_EXACT = 2**53  # integers above this do not convert to float exactly
_UNKNOWN_SERVICE = "unknown_service"

Mask = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
# (type tags, int64 values, the same bits as doubles) -> (taken, converted value)
Tags = npt.NDArray[np.uint8]
_Accept = Callable[[Tags, I64, F64], tuple[Mask, Any]]


def _accept_tokens(t: Tags, v: I64, d: F64) -> tuple[Mask, I64]:
    """Token counts: non-negative integers (integral doubles too), saturated at UInt32."""
    ok_int = (t == T_INT) & (v >= 0)
    ok_dbl = (t == T_DBL) & np.isfinite(d) & (d >= 0) & (d == np.floor(d))
    dint = np.minimum(np.where(ok_dbl, d, 0.0), float(_U32MAX)).astype(np.int64)
    return ok_int | ok_dbl, np.where(ok_int, np.minimum(v, _U32MAX), dint)


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
        self._kinds_ok = np.array([k in m.span_kinds for k in SPAN_KINDS] + [False])
        self._keep = list(dict.fromkeys(m.keep_attributes))
        # Pricing is vectorized for the shipped Pricer only; another pricer is called per
        # record by the reference path.
        from collector.pricing import Pricer as PlainPricer

        self._vector_pricer = pricer is None or type(pricer) is PlainPricer
        extras = ["_OTHER", m.default_pool, *SPAN_KINDS, "ok", "error", "span.kind"]
        extras += sorted(set(m.pool_by_model.values())) + self._keep
        self._extras = list(dict.fromkeys(extras))
        encoded = [e.encode() for e in self._extras]
        self._extras_data = b"".join(encoded)
        self._extras_ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    # -- public ------------------------------------------------------------------------
    def map(self, raw: bytes) -> ColumnarResult | None:
        """The rows of ``raw``; None when the body needs the reference path as a whole."""
        assert _otlpcols is not None
        out = _otlpcols.decode(raw, self.keys, self._markers, g.VLLM_SPAN)
        if out is None or not self._vector_pricer:
            return None
        total, n, span_buf, nres, res_buf, attr_buf, strings, str_offsets, str_data = out
        if n == 0:
            return ColumnarResult(SCHEMA.empty_table(), total)
        spans = np.frombuffer(span_buf, dtype=SPAN_DTYPE)
        attrs = np.frombuffer(attr_buf, dtype=ATTR_DTYPE).reshape(n, len(self.keys))
        res = np.frombuffer(res_buf, dtype=ATTR_DTYPE).reshape(nres, len(self.keys))
        offsets = np.frombuffer(str_offsets, dtype=np.int32)
        if int(offsets[-1]) + len(self._extras_data) > 2**31 - 1:
            return None
        blob = (
            np.concatenate([offsets, (offsets[-1] + self._extras_ends).astype(np.int32)]),
            str_data + self._extras_data,
        )
        try:
            return _Body(self, raw, spans, attrs, res, strings, blob, total).run()
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
        res: npt.NDArray[Any],
        strings: list[str],
        blob: tuple[npt.NDArray[np.int32], bytes],
        total: int,
    ) -> None:
        self.mp = mapper
        self.raw = raw
        self.spans = spans
        self.n = len(spans)
        self.total = total
        self.strings = strings
        base = len(strings)
        strings.extend(mapper._extras)
        self.extra = {s: base + i for i, s in enumerate(mapper._extras)}
        self.blob_offsets = blob[0].tobytes()
        self.blob_data = blob[1]
        # Key-major copies: one contiguous row per attribute key.
        self.types = np.ascontiguousarray(attrs["type"].T)
        self.vals = np.ascontiguousarray(attrs["val"].T)
        self.codes = np.ascontiguousarray(attrs["code"].T)
        self.codes2 = attrs["code2"]
        self.seen: list[bool] = [bool(v) for v in np.any(self.types, axis=1)]
        self.res = res
        self.res_seen: list[bool] = [bool(v) for v in np.any(res["type"], axis=0)]
        self.ridx = spans["res"]
        self.ref = np.zeros(self.n, dtype=bool)  # spans the reference code maps
        self.zeros_u8 = np.zeros(self.n, dtype=np.uint8)
        self.zeros_i32 = np.zeros(self.n, dtype=np.int32)

    def strs(self, codes: npt.NDArray[Any]) -> pa.Array:
        """The string column of ``codes`` (built in C, no Python object per value)."""
        assert _otlpcols is not None
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        offs, data = _otlpcols.gather(self.blob_offsets, self.blob_data, codes)
        return pa.StringArray.from_buffers(len(codes), pa.py_buffer(offs), pa.py_buffer(data))

    def _res_col(self, k: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
        if not self.res_seen[k]:
            return self.zeros_u8, self.zeros_i32
        col = self.res[:, k]
        if len(col) == 1:
            return (np.full(self.n, col["type"][0], dtype=np.uint8),
                    np.full(self.n, col["code"][0], dtype=np.int32))  # fmt: skip
        return col["type"][self.ridx], col["code"][self.ridx]

    # -- attribute access -------------------------------------------------------------
    def _col(self, key: str) -> tuple[Tags, I64, npt.NDArray[np.int32]]:
        k = self.mp._k[key]
        return self.types[k], self.vals[k], self.codes[k]

    def _first(self, keys: Sequence[str], accept: _Accept, dtype: type) -> tuple[Mask, Any]:
        """(present, value) of the first present key; ``accept`` says which values it takes
        and converts them. Values it does not take go to the reference mapping."""
        present = np.zeros(self.n, dtype=bool)
        value: npt.NDArray[Any] = np.zeros(self.n, dtype=dtype)
        for key in keys:
            if not self.seen[self.mp._k[key]]:
                continue
            t, v, _ = self._col(key)
            here = (t != T_ABSENT) & ~present
            if not here.any():
                continue
            with np.errstate(invalid="ignore"):  # NaN doubles compare false: not taken
                ok, converted = accept(t, v, v.view(np.float64))
            self.ref |= here & ~ok
            value = np.where(here & ok, converted, value)
            present |= here
        return present, value

    def _number(self, keys: Sequence[str], limit: float) -> tuple[Mask, F64]:
        def accept(t: Tags, v: I64, d: F64) -> tuple[Mask, F64]:
            ok_int = (t == T_INT) & (v >= 0) & (v <= limit)
            ok_dbl = (t == T_DBL) & np.isfinite(d) & (d >= 0) & (d <= limit)
            return ok_int | ok_dbl, np.where(ok_int, v.astype(np.float64), d)

        return self._first(keys, accept, np.float64)

    def _seconds(self, *keys: str) -> tuple[Mask, F64]:
        return self._number(keys, _MAX_SECONDS)

    def _tokens(self, *keys: str) -> I64:
        _, value = self._first(keys, _accept_tokens, np.int64)
        return value  # type: ignore[no-any-return]

    def _text(self, key: str, *, first: bool = False) -> npt.NDArray[np.int32]:
        """String codes of a span attribute read as text (0 when absent)."""
        k = self.mp._k[key]
        if not self.seen[k]:
            return self.zeros_i32
        t = self.types[k]
        code = np.where(t == T_STR, self.codes[k], 0)
        arr = self.codes2[:, k] if first else self.codes[k]
        code = np.where(t == T_STRARR, arr, code)
        self.ref |= (t != T_ABSENT) & (t != T_STR) & (t != T_STRARR)
        return code.astype(np.int32)

    def _lookup(self, keys: Sequence[str]) -> npt.NDArray[np.int32]:
        """``genai._lookup``: first non-empty string, span attributes then resource."""
        out = np.full(self.n, -1, dtype=np.int32)
        for key in keys:
            k = self.mp._k[key]
            if self.seen[k]:
                st = self.types[k]
                if self.res_seen[k]:
                    rt, rc = self._res_col(k)
                    t = np.where(st != T_ABSENT, st, rt)
                    c = np.where(st != T_ABSENT, self.codes[k], rc)
                else:
                    t, c = st, self.codes[k]
            elif self.res_seen[k]:
                t, c = self._res_col(k)
            else:
                continue
            open_ = out < 0
            if not open_.any():
                break
            self.ref |= open_ & (t != T_ABSENT) & (t != T_STR)
            take = open_ & (t == T_STR) & (c != 0)
            if key == "service.name" and take.any():
                unknown = self._str_flags(c[take], lambda s: s.startswith(_UNKNOWN_SERVICE))
                take[np.flatnonzero(take)[unknown]] = False
            out = np.where(take, c, out)
        return np.where(out < 0, 0, out).astype(np.int32)

    def _str_flags(self, codes: npt.NDArray[Any], pred: Any) -> Mask:
        uniq, inv = np.unique(codes, return_inverse=True)
        flags = np.array([bool(pred(self.strings[int(c)])) for c in uniq], dtype=bool)
        return flags[inv]

    def _str_map(self, codes: npt.NDArray[Any], fn: Any) -> npt.NDArray[np.int32]:
        uniq, inv = np.unique(codes, return_inverse=True)
        mapped = np.array([fn(self.strings[int(c)]) for c in uniq], dtype=np.int32)
        return mapped[inv]

    # -- mapping ----------------------------------------------------------------------
    def run(self) -> ColumnarResult:
        mp, m, spans, n = self.mp, self.mp.mapping, self.spans, self.n
        # is_llm_span and the kind filter.
        t_op, _, c_op = self._col(g.OPERATION)
        has_sys = self._col(g.SYSTEM)[0] != T_ABSENT
        has_e2e = self._col(g.LAT_E2E)[0] != T_ABSENT
        unsure = (t_op != T_ABSENT) & (t_op != T_STR)
        inference = np.ones(n, dtype=bool)
        if (t_op == T_STR).any():
            inference = ~self._str_flags(c_op, lambda s: s in g.NON_INFERENCE_OPERATIONS)
        is_llm = (spans["vllm"] == 1) | np.where(
            t_op == T_STR, inference, (t_op == T_ABSENT) & (has_sys | has_e2e)
        )
        kind = spans["kind"]
        # A non-string operation name: is_llm_span decides (or fails) before the kind check.
        mapped = (is_llm & mp._kinds_ok[np.clip(kind, 0, 6)]) | unsure
        self.ref |= unsure

        # Durations (seconds) and token counts.
        start = spans["start"]
        end = spans["end"]
        has_e2e_attr, e2e = self._seconds(g.LAT_E2E)
        span_s = np.where(end > start, end - start, np.uint64(0)).astype(np.float64) / 1e9
        e2e = np.where(has_e2e_attr, e2e, span_s)
        has_ttft, ttft = self._seconds(g.LAT_TTFT, g.TIME_TO_FIRST_CHUNK, g.SERVER_TTFT)
        has_queue, queue = self._seconds(g.LAT_QUEUE)
        has_prefill, prefill = self._seconds(g.LAT_PREFILL)
        has_decode, decode = self._seconds(g.LAT_DECODE)
        derive = ~has_decode & has_ttft & (e2e >= ttft)
        decode = np.where(has_decode, decode, np.where(derive, e2e - ttft, 0.0))
        has_decode = has_decode | derive

        inp = self._tokens(g.INPUT_TOKENS, g.PROMPT_TOKENS)
        out = self._tokens(g.OUTPUT_TOKENS, g.COMPLETION_TOKENS)
        cached = self._tokens(g.CACHE_READ, g.CACHE_READ_OLD)
        cached = np.where(inp != 0, np.minimum(cached, inp), cached)

        has_tpot = has_ttft & (out > 1) & (e2e >= ttft)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            tpot = np.where(has_tpot, (e2e - ttft) / np.maximum(out - 1, 1), 0.0)
            has_tps = has_decode & (decode > 0) & (out > 1)
            tps = np.where(has_tps, (out - 1) / np.where(has_tps, decode, 1.0), 0.0)

        # Status and text columns.
        err = self._text(g.ERROR_TYPE)
        failed = (spans["status"] == _STATUS_ERROR) | (err != 0)
        err = np.where(failed & (err == 0), self.extra["_OTHER"], err)
        finish = self._text(g.FINISH_REASONS, first=True)
        model = self._lookup(m.model_keys)
        pool = self._lookup(m.pool_keys)
        if (pool == 0).any():
            default = self.extra[m.default_pool]
            fill = self._str_map(
                model,
                lambda s: self.extra[m.pool_by_model[s]] if m.pool_by_model.get(s) else default,
            )
            pool = np.where(pool == 0, fill, pool)
        replica = self._lookup(m.replica_keys)
        tenant = self._lookup(m.tenant_keys)
        priority = self._lookup(m.priority_keys)

        # Start time the store can hold; otherwise map_span raises.
        self.ref |= (start < 1) | (start > np.uint64(2**63 - 1))

        ttft_us, ttft_ok = _us(ttft, has_ttft)
        tpot_us, _ = _us(tpot, has_tpot)
        e2e_us, _ = _us(e2e, np.ones(n, dtype=bool))
        queue_us, _ = _us(queue, has_queue)
        prefill_us, _ = _us(prefill, has_prefill)
        decode_us, _ = _us(decode, has_decode)

        cost = self._cost(pool, replica, model, inp, out, cached,
                          ttft_us, has_ttft, e2e_us, queue_us, has_queue,
                          prefill_us, has_prefill, decode_us, has_decode)  # fmt: skip
        has_usage, usage = self._number((g.USAGE_COST,), float(_MAX_EXACT))
        cost = np.where((cost == 0.0) & has_usage, usage, cost)

        ids = self._ids(failed, ttft_us, ttft_ok, e2e_us)

        kept = self._kept(kind)
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

        def u32(values: npt.NDArray[Any], present: Mask | None = None) -> pa.Array:
            return _nullable(values[rows].astype(np.uint32), _U32, present, rows)

        trace, span_id = ids
        table = pa.Table.from_arrays(
            [
                pa.array((start[rows] // np.uint64(1000)).astype(np.int64), SCHEMA.field(0).type),
                s(pool), s(model), s(replica), s(tenant), s(priority),
                s(np.where(failed, self.extra["error"], self.extra["ok"])),
                s(err), s(finish),
                _fixed(trace[rows], 16), _fixed(span_id[rows], 8),
                u32(ttft_us, has_ttft), u32(tpot_us, has_tpot), u32(e2e_us),
                u32(queue_us, has_queue), u32(prefill_us, has_prefill),
                u32(decode_us, has_decode),
                u32(inp), u32(out), u32(cached),
                _nullable(tps[rows].astype(np.float32), pa.float32(), has_tps, rows),
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
        gpu = np.isin(pool, list(rates)) if rates else np.zeros(self.n, dtype=bool)
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

    def _kept(self, kind: npt.NDArray[np.int32]) -> list[tuple[str, npt.NDArray[np.int32]]]:
        """String codes (-1: absent) of ``keep_attributes`` on the span, then span.kind."""
        entries: list[tuple[str, npt.NDArray[np.int32]]] = []
        names = np.array([self.extra[k] for k in SPAN_KINDS], dtype=np.int32)
        kind_codes = names[np.clip(kind, 0, 5)]
        # map_span keeps span attributes first, then sets "span.kind": that key sits where
        # keep_attributes puts it only if the span has an attribute of that name.
        own = self.types[self.mp._k["span.kind"]] != T_ABSENT if "span.kind" in self.mp._k else None
        for key in self.mp._keep:
            if key == "span.kind":
                assert own is not None
                entries.append((key, np.where(own, kind_codes, -1).astype(np.int32)))
                kind_codes = np.where(own, -1, kind_codes).astype(np.int32)
                continue
            k = self.mp._k[key]
            if not self.seen[k]:
                continue
            t = self.types[k]
            codes = self._text(key)
            entries.append((key, np.where(t == T_ABSENT, -1, codes).astype(np.int32)))
        entries.append(("span.kind", kind_codes))
        return entries

    def _attributes(
        self, entries: list[tuple[str, npt.NDArray[np.int32]]], rows: npt.NDArray[Any]
    ) -> pa.Array:
        """The ``attributes`` map column of ``rows``."""
        vals = np.stack([c[rows] for _, c in entries], axis=1)  # (rows, entries)
        present = vals >= 0
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(present.sum(axis=1), out=offsets[1:])
        key_idx = np.broadcast_to(np.arange(len(entries), dtype=np.int32), vals.shape)[present]
        names = np.array([self.extra[k] for k, _ in entries], dtype=np.int32)
        return pa.MapArray.from_arrays(
            pa.array(offsets), self.strs(names[key_idx]), self.strs(vals[present])
        )

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


def _us(seconds: F64, present: Mask) -> tuple[I64, Mask]:
    """``genai._us``: round half up to whole microseconds, saturating at UInt32."""
    x = seconds * 1e6 + 0.5
    us = np.where(x < 4294967296.0, np.floor(np.where(present, x, 0.0)), float(_U32MAX))
    return us.astype(np.int64), present


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
