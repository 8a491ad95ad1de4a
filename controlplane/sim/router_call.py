"""One proxied request of the router: forwarding, accounting, span, metrics.

``ProxiedCall`` forwards one upstream response (whole or streamed byte for byte), turns
a replica failure into an OpenAI error (502, or an SSE error event mid-stream), releases
the replica in the balancer, counts the outcome and ends the request's span with what it
saw pass by (usage, finish reason, gateway-side time to first chunk).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi.responses import Response
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.sim import wire
from controlplane.sim.balancer import Backend, Balancer

log = logging.getLogger(__name__)

REPLICA_HEADER = "x-governor-replica"  # on responses: which replica served it
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "governor_router_requests", "Requests proxied, by replica and HTTP status",
            ["replica", "code"], registry=registry,
        )  # fmt: skip
        self.stream_errors = Counter(
            "governor_router_stream_errors",
            "Streams ended with an error event because the replica failed mid-stream",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "governor_router_upstream_errors",
            "Connections to a replica that failed before a response",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.rejected = Counter(
            "governor_router_admission_rejected", "Requests refused with 429 by admission",
            ["tenant", "priority"], registry=registry,
        )  # fmt: skip
        self.no_replica = Counter(
            "governor_router_no_replica", "Requests refused with 503: no serving replica",
            registry=registry,
        )  # fmt: skip
        self.outstanding = Gauge(
            "governor_router_outstanding_requests", "Requests in flight per replica",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "governor_router_time_to_first_chunk_seconds",
            "Gateway-side time from request to the first response byte",
            buckets=TTFT_BUCKETS, registry=registry,
        )  # fmt: skip


def request_attributes(
    parsed: wire.CompletionRequest, tenant: str, priority: str, backend: Backend, pool: str
) -> dict[str, Any]:
    host, _, port = backend.url.split("://", 1)[-1].partition(":")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": parsed.kind,
        "gen_ai.provider.name": "vllm",
        "gen_ai.request.model": parsed.model,
        "gen_ai.request.max_tokens": parsed.max_tokens,
        "gen_ai.request.stream": parsed.stream,
        "server.address": host,
        "governor.replica": backend.name,
        "governor.tenant": tenant,
        "governor.priority": priority,
    }
    if port.split("/")[0].isdigit():
        attrs["server.port"] = int(port.split("/")[0])
    if pool:
        attrs["governor.pool"] = pool
    return attrs


class ProxiedCall:
    """One proxied response: forwards it, then releases the replica and ends the span."""

    def __init__(
        self,
        metrics: RouterMetrics,
        balancer: Balancer,
        backend: Backend,
        resp: httpx.Response,
        span: trace.Span,
        start: float,
        stream: bool,
    ) -> None:
        self.metrics, self.balancer = metrics, balancer
        self.backend, self.resp, self.span = backend, resp, span
        self.start = start
        self.stream_mode = stream
        self._usage: dict[str, Any] | None = None
        self._finish: str | None = None
        self._chunks = 0
        self._tail = b""

    def _first_byte(self) -> None:
        ttft = time.perf_counter() - self.start
        self.metrics.ttft.observe(ttft)
        self.span.set_attribute("gen_ai.response.time_to_first_chunk", ttft)

    def _scan(self, data: bytes) -> None:
        """Pick usage and finish reason out of SSE events (only lines that carry them)."""
        buf = self._tail + data
        *lines, self._tail = buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: {"):
                continue
            self._chunks += 1
            if b'"usage"' not in line and b'"finish_reason":"' not in line:
                continue
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            self._absorb(event)

    def _absorb(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        if isinstance(event.get("id"), str):
            self.span.set_attribute("gen_ai.response.id", event["id"])
        if isinstance(event.get("model"), str):
            self.span.set_attribute("gen_ai.response.model", event["model"])

    def _finish_span(self, error: str | None) -> None:
        if self._usage:
            self.span.set_attribute(
                "gen_ai.usage.input_tokens", int(self._usage.get("prompt_tokens", 0))
            )
            self.span.set_attribute(
                "gen_ai.usage.output_tokens", int(self._usage.get("completion_tokens", 0))
            )
        elif self.stream_mode and self._chunks:
            # Without include_usage each content chunk carries one token.
            self.span.set_attribute("gen_ai.usage.output_tokens", self._chunks)
        if self._finish:
            self.span.set_attribute("gen_ai.response.finish_reasons", [self._finish])
        if error is None and self.resp.status_code >= 400:
            error = str(self.resp.status_code)
        if error is not None:
            self.span.set_attribute("error.type", error)
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()

    async def whole(self) -> Response:
        error: str | None = None
        try:
            content = await self.resp.aread()
            self._first_byte()
        except httpx.HTTPError as exc:
            self.metrics.upstream_errors.labels(self.backend.name).inc()
            content = json.dumps(
                wire.error_body(f"replica {self.backend.name} failed: {exc}", "upstream_error", 502)
            ).encode()
            error = type(exc).__name__
            status = 502
        else:
            status = self.resp.status_code
            if status == 200:
                try:
                    self._absorb(json.loads(content))
                except ValueError:
                    pass
        finally:
            await self.resp.aclose()
            self.balancer.release(self.backend)
        self.metrics.requests.labels(self.backend.name, str(status)).inc()
        self._finish_span(error)
        media = self.resp.headers.get("content-type", "application/json")
        extra = {k: v for k, v in self.resp.headers.items() if k.lower() == "retry-after"}
        extra[REPLICA_HEADER] = self.backend.name
        return Response(content, status, media_type=media, headers=extra)

    async def stream(self) -> AsyncIterator[bytes]:
        error: str | None = None
        first = True
        last = b"\n\n"
        try:
            async for data in self.resp.aiter_raw():
                if first:
                    self._first_byte()
                    first = False
                self._scan(data)
                last = data
                yield data
        except httpx.HTTPError as exc:
            # The replica went away mid-stream: close this stream with an error event.
            error = type(exc).__name__
            self.metrics.stream_errors.labels(self.backend.name).inc()
            log.warning("replica %s failed mid-stream: %s", self.backend.name, exc)
            event = wire.error_body(
                f"replica {self.backend.name} failed mid-stream: {error}", "upstream_error", 502
            )
            yield (b"" if last.endswith(b"\n\n") else b"\n\n") + wire.sse(event) + wire.DONE
        finally:
            await self.resp.aclose()
            self.balancer.release(self.backend)
            code = "200" if error is None else "stream_error"
            self.metrics.requests.labels(self.backend.name, code).inc()
            self._finish_span(error)
