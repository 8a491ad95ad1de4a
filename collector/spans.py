"""``LLMSpanProcessor``: an OpenTelemetry ``SpanProcessor`` that turns LLM spans into rows.

Add it to any ``TracerProvider`` (a gateway, a router, an engine)::

    provider.add_span_processor(LLMSpanProcessor(writer, pricer=pricer))

``on_end`` runs on the thread that ended the span, so it only does a constant-time check
(span name, at most three attribute keys) and an append to a bounded deque; when the
deque is full the span is dropped and counted. A worker thread maps spans
(``collector.genai.map_span``) and emits batches of records to the sink.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from collector.errors import SpanMappingError
from collector.genai import AttributeMapping, Pricer, SpanView, is_llm_span, map_span
from collector.records import RequestRecord, Sink

log = logging.getLogger(__name__)

_KINDS = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}
# Log the first mapping error and then one in this many, so a bad producer cannot flood.
_LOG_EVERY = 1000


def _plain(attributes: Any) -> Mapping[str, Any]:
    """A plain dict view of SDK attributes.

    ``BoundedAttributes`` is a ``MutableMapping`` without ``__contains__``/``get``, so each
    missing-key lookup through it raises and catches a ``KeyError`` (about a microsecond).
    Its backing dict is read directly when present; attributes of an ended span and of a
    resource are immutable, so no copy is needed.
    """
    inner = getattr(attributes, "_dict", None)
    if isinstance(inner, dict):
        return inner
    return attributes if isinstance(attributes, dict) else dict(attributes or {})


def _span_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    raw = getattr(span, "_attributes", _MISSING)
    return _plain(span.attributes if raw is _MISSING else raw)


_MISSING = object()


def span_view(span: ReadableSpan) -> SpanView:
    """The mapping's view of an SDK span."""
    ctx = span.context
    resource = _plain(span.resource.attributes) if span.resource is not None else {}
    return SpanView(
        name=span.name,
        attributes=_span_attributes(span),
        resource=resource,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        kind=_KINDS.get(span.kind, "unspecified"),
        status_error=span.status.status_code is StatusCode.ERROR,
        status_message=span.status.description or "",
        trace_id=format(ctx.trace_id, "032x") if ctx is not None else "",
        span_id=format(ctx.span_id, "016x") if ctx is not None else "",
    )


class LLMSpanProcessor(SpanProcessor):
    """Maps finished LLM spans to ``RequestRecord`` s off the caller's thread."""

    def __init__(
        self,
        sink: Sink,
        *,
        mapping: AttributeMapping | None = None,
        pricer: Pricer | None = None,
        queue_max: int = 65536,
        batch_max: int = 512,
        interval_s: float = 0.5,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if queue_max < 1:
            raise ValueError(f"queue_max must be at least 1, got {queue_max}")
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, got {batch_max}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._sink = sink
        self._mapping = mapping or AttributeMapping()
        self._pricer = pricer
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._interval_s = interval_s
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._flushes: collections.deque[threading.Event] = collections.deque()
        self._drop_lock = threading.Lock()
        self._closed = False
        # Counters: ``dropped`` is exact (taken under a lock on the slow path); ``ignored``
        # is a plain increment on the hot path and may undercount under heavy contention.
        self.dropped = 0
        self.ignored = 0
        self.queued = 0  # spans taken off the queue by the worker
        self.mapped = 0
        self.rejected = 0
        self.emit_errors = 0
        if registry is not None:
            registry.register(_ProcessorCollector(self))
        self._worker = threading.Thread(
            target=self._run, name="governor-llm-span-processor", daemon=True
        )
        self._worker.start()

    # --- SpanProcessor -------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        try:
            if not is_llm_span(span.name, _span_attributes(span)):
                self.ignored += 1
                return
            if self._closed or len(self._queue) >= self._queue_max:
                with self._drop_lock:
                    self.dropped += 1
                return
            self._queue.append(span)
            if len(self._queue) >= self._batch_max and not self._wake.is_set():
                self._wake.set()
        except Exception:  # on_end must never raise into the instrumented code
            with self._drop_lock:
                self.dropped += 1

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Map and emit every span ended before this call; False if that took too long."""
        if not self._worker.is_alive():
            return not self._queue
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        return done.wait(max(timeout_millis, 0) / 1000)

    def shutdown(self, timeout_millis: float = 30000) -> None:
        """Stop accepting spans, drain what is queued, and wait at most ``timeout_millis``."""
        self._closed = True
        self._wake.set()
        self._worker.join(max(timeout_millis, 0) / 1000)
        if self._worker.is_alive():
            log.warning(
                "LLM span processor did not drain within %.0f ms; %d spans still queued",
                timeout_millis,
                len(self._queue),
            )

    # --- worker --------------------------------------------------------------------------

    def queue_size(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            closing = self._closed
            flushes = []
            while self._flushes:
                flushes.append(self._flushes.popleft())
            self._drain()
            for done in flushes:
                done.set()
            if closing:
                return

    def _drain(self) -> None:
        while self._queue:
            batch: list[ReadableSpan] = []
            while self._queue and len(batch) < self._batch_max:
                batch.append(self._queue.popleft())
            self.queued += len(batch)
            records = self._map(batch)
            if not records:
                continue
            try:
                self._sink.emit(records)
            except Exception:  # the sink's failure must not kill the worker
                self.emit_errors += len(records)
                log.exception("LLM span processor: sink rejected %d records", len(records))

    def _map(self, batch: list[ReadableSpan]) -> list[RequestRecord]:
        records = []
        for span in batch:
            try:
                record = map_span(span_view(span), self._mapping, self._pricer)
            except SpanMappingError as exc:
                self.rejected += 1
                if self.rejected % _LOG_EVERY == 1:
                    log.warning(
                        "LLM span %r not recorded: %s (%d rejected so far)",
                        span.name,
                        exc,
                        self.rejected,
                    )
                continue
            except Exception:
                self.rejected += 1
                log.exception("LLM span %r could not be mapped", span.name)
                continue
            if record is None:
                self.ignored += 1
            else:
                self.mapped += 1
                records.append(record)
        return records


class _ProcessorCollector:
    """Exports the processor's counters; reads plain ints so the hot path stays cheap."""

    def __init__(self, proc: LLMSpanProcessor) -> None:
        self._proc = proc

    def collect(self) -> Iterator[Metric]:
        p = self._proc
        yield GaugeMetricFamily(
            "governor_spans_queue_size", "LLM spans waiting to be mapped", value=p.queue_size()
        )
        for name, doc, value in (
            ("governor_spans_queued", "LLM spans taken off the queue for mapping", p.queued),
            ("governor_spans_dropped", "LLM spans dropped: queue full or shut down", p.dropped),
            ("governor_spans_mapped", "LLM spans mapped to request records", p.mapped),
            ("governor_spans_ignored", "Spans that are not LLM requests", p.ignored),
            (
                "governor_spans_rejected",
                "LLM spans whose attributes could not be mapped",
                p.rejected,
            ),
            ("governor_spans_emit_errors", "Records the sink refused", p.emit_errors),
        ):
            yield CounterMetricFamily(name, doc, value=value)
