"""Span export that survives a receiver outage: failed batches wait and are sent again.

The OTLP exporter retries one batch for its timeout and then gives up, so spans finished
while Governor restarts would be lost. ``BufferingExporter`` keeps failed batches (up to
``max_spans``, oldest dropped first and counted) and sends them, oldest first, before new
ones at the next export; a batch refused ``max_attempts`` times is dropped (a receiver
that keeps rejecting it will not take it later either) so it cannot block the rest.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger(__name__)


class BufferingExporter(SpanExporter):
    def __init__(
        self, inner: SpanExporter, *, max_spans: int = 100_000, max_attempts: int = 50
    ) -> None:
        self.inner = inner
        self.max_spans = max_spans
        self.max_attempts = max_attempts
        self.dropped = 0
        self._lock = threading.Lock()
        # (spans, attempts so far), oldest first
        self._backlog: collections.deque[tuple[tuple[ReadableSpan, ...], int]] = collections.deque()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Spans waiting for the receiver."""
        return self._pending

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if spans:
                self._backlog.append((tuple(spans), 0))
                self._pending += len(spans)
            self._send()
            self._trim()
        # Failed spans are kept here, so the processor has nothing to report or retry.
        return SpanExportResult.SUCCESS

    def _send(self) -> None:
        while self._backlog:
            batch, attempts = self._backlog[0]
            if self.inner.export(batch) is SpanExportResult.SUCCESS:
                self._backlog.popleft()
                self._pending -= len(batch)
                continue
            self._backlog[0] = (batch, attempts + 1)
            if attempts + 1 >= self.max_attempts:
                self._backlog.popleft()
                self._pending -= len(batch)
                self.dropped += len(batch)
                log.error("dropped %d spans refused %d times", len(batch), attempts + 1)
                continue
            log.warning("span export failed; %d spans kept for the next try", self._pending)
            return

    def _trim(self) -> None:
        while self._pending > self.max_spans and self._backlog:
            batch, _ = self._backlog.popleft()
            self._pending -= len(batch)
            self.dropped += len(batch)
            log.error("span backlog over %d spans: dropped %d oldest", self.max_spans, len(batch))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            self._send()
            return not self._backlog

    def shutdown(self) -> None:
        with self._lock:
            self._send()  # one last try for what is still waiting
            if self._backlog:
                log.error("shutting down with %d spans not delivered", self._pending)
        self.inner.shutdown()
