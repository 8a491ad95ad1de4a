"""``governor serve`` integration of the OTLP receiver: decode -> map (with cost) -> writer.

The route (``controlplane/api/routes/otlp.py``) hands raw bodies to ``OtlpIngest``, kept in
``ctx.services["otlp_ingest"]``. Rows go to the shared ``collector.writer.Writer``
(``ctx.services["writer"]``; created here if no other integration made one), which
batches them into the store and spools them while the store is down.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter

from collector.errors import SpanMappingError
from collector.exemplars import TraceIdPolicy
from collector.genai import AttributeMapping, Pricer, map_span, wanted_keys
from collector.otlp import PROTOBUF, decode, decode_protobuf, decompress, media_type
from collector.records import Sink
from controlplane.config import GovernorConfig
from controlplane.errors import ConfigError, GovernorError, Problem, QueryError
from controlplane.server import AppContext, is_loopback, register_builder

if TYPE_CHECKING:
    from collector.pricing import ConcurrencySource, ConcurrencyTracker

log = logging.getLogger(__name__)

SERVICE = "otlp_ingest"
WRITER_SERVICE = "writer"
CONCURRENCY_SERVICE = "concurrency"
# At most this many mapping problems are quoted back in a partial-success message.
_MAX_QUOTED = 3


def mapping_from_config(cfg: GovernorConfig) -> AttributeMapping:
    ing = cfg.ingest
    return AttributeMapping(
        pool_keys=tuple(ing.pool_keys),
        replica_keys=tuple(ing.replica_keys),
        model_keys=tuple(ing.model_keys),
        tenant_keys=tuple(ing.tenant_keys),
        priority_keys=tuple(ing.priority_keys),
        pool_by_model={p.model: p.name for p in cfg.pools},
        default_pool=ing.default_pool,
        keep_attributes=tuple(ing.keep_attributes),
        span_kinds=tuple(ing.span_kinds),
    )


class IngestOverloaded(GovernorError):
    """The writer cannot take this request's rows now; the exporter should retry later."""


@dataclass(frozen=True)
class IngestResult:
    """What one export request yielded; ``message`` explains rejected spans, if any."""

    spans: int
    accepted: int
    rejected: int
    message: str = ""


class OtlpIngest:
    """Turns OTLP/HTTP trace bodies into request rows in ``sink``."""

    def __init__(
        self,
        sink: Sink,
        *,
        mapping: AttributeMapping | None = None,
        pricer: Pricer | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
        token: str | None = None,
        room: Callable[[], int] | None = None,
        registry: CollectorRegistry | None = None,
        trace_ids: TraceIdPolicy | None = None,
    ) -> None:
        """``room``, when given, says how many records the sink can take right now."""
        self._sink = sink
        self._trace_ids = trace_ids if trace_ids is not None and trace_ids.mode != "all" else None
        self._room = room
        self._emit_lock = threading.Lock()
        self._mapping = mapping or AttributeMapping()
        self._wanted = wanted_keys(self._mapping)
        self._pricer = pricer
        self.max_body_bytes = max_body_bytes
        self._token = token.encode() if token else None
        reg = registry or CollectorRegistry()
        self._columnar = self._columnar_mapper(sink)
        self._spans = Counter(
            "governor_otlp_spans",
            "Spans received over OTLP/HTTP, by outcome",
            ["outcome"],
            registry=reg,
        )
        self._requests = Counter(
            "governor_otlp_requests",
            "OTLP/HTTP export requests, by result",
            ["result"],
            registry=reg,
        )

    def _columnar_mapper(self, sink: Sink) -> Any:
        """The fast path for protobuf bodies, when the sink takes Arrow and C is built."""
        if not callable(getattr(sink, "emit_arrow", None)):
            return None
        from collector import columnar

        if not columnar.AVAILABLE:
            global _WARNED_NO_EXTENSION
            if not _WARNED_NO_EXTENSION:
                _WARNED_NO_EXTENSION = True
                log.warning(
                    "OTLP ingest: the columnar decoder (collector._otlpcols) is not built; "
                    "protobuf bodies take the slower per-span path. Reinstall with a C "
                    "compiler and Python headers (pip install -e .) to build it."
                )
            return None
        try:
            return columnar.ColumnarMapper(
                self._mapping, self._pricer, self._trace_ids, max_quoted=_MAX_QUOTED
            )
        except ValueError as exc:
            log.warning("OTLP ingest: per-span path for protobuf bodies: %s", exc)
            return None

    @property
    def columnar(self) -> bool:
        """True when protobuf bodies take the columnar path."""
        return self._columnar is not None

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(self._token, header[len("Bearer ") :].strip().encode())

    def count_request(self, result: str) -> None:
        self._requests.labels(result).inc()

    def handle(
        self, body: bytes, content_type: str | None, content_encoding: str | None
    ) -> IngestResult:
        """Decode, map and emit; raises ``OtlpDecodeError`` (nothing emitted) on a bad body.

        Raises ``IngestOverloaded`` (nothing emitted) when the sink has no room for the
        rows: refusing the whole request lets the exporter retry it later without
        duplicates, where accepting it would have the writer drop rows.
        """
        if self._room is not None and self._room() <= 0:
            raise IngestOverloaded("the store writer's queue is full; retry later")
        if self._columnar is not None and media_type(content_type) == PROTOBUF:
            raw = decompress(body, content_encoding, self.max_body_bytes)
            try:
                fast = self._columnar.map(raw)
            except Exception:  # a fast-path bug must not fail the request: use the reference
                log.exception(
                    "OTLP ingest: columnar path failed; this body takes the per-span path"
                )
                fast = None
            if fast is not None:
                return self._emit_table(fast)
            batch = decode_protobuf(raw, self._wanted)  # the reference path, whole body
        else:
            batch = decode(
                body,
                content_type,
                content_encoding,
                max_bytes=self.max_body_bytes,
                wanted=self._wanted,
            )
        records = []
        problems: list[str] = []
        rejected = 0
        for view in batch.spans:
            try:
                record = map_span(view, self._mapping, self._pricer)
            except SpanMappingError as exc:
                rejected += 1
                if len(problems) < _MAX_QUOTED:
                    problems.append(f"span {view.span_id or '?'} ({view.name}): {exc}")
                continue
            except Exception:  # a mapping bug must cost one span, not the whole request
                log.exception("OTLP ingest: mapping span %r failed", view.name)
                rejected += 1
                if len(problems) < _MAX_QUOTED:
                    problems.append(f"span {view.span_id or '?'} ({view.name}): internal error")
                continue
            if record is not None:
                records.append(self._trace_ids.apply(record) if self._trace_ids else record)
        if records:
            # Check and emit together, so concurrent requests cannot both fit in one gap.
            with self._emit_lock:
                if self._room is not None and self._room() < len(records):
                    raise IngestOverloaded(
                        f"the store writer's queue has no room for {len(records)} rows; retry later"
                    )
                self._sink.emit(records)
        return self._result(batch.total, len(records), rejected, problems)

    def _emit_table(self, fast: Any) -> IngestResult:
        table = fast.table
        rows = table.num_rows
        if rows:
            with self._emit_lock:
                if self._room is not None and self._room() < rows:
                    raise IngestOverloaded(
                        f"the store writer's queue has no room for {rows} rows; retry later"
                    )
                self._sink.emit_arrow(fast_table_name(), table)  # type: ignore[attr-defined]
        return self._result(fast.total, fast.accepted, fast.rejected, fast.problems)

    def _result(
        self, total: int, accepted: int, rejected: int, problems: list[str]
    ) -> IngestResult:
        ignored = total - accepted - rejected
        self._spans.labels("mapped").inc(accepted)
        self._spans.labels("rejected").inc(rejected)
        self._spans.labels("ignored").inc(ignored)
        message = ""
        if rejected:
            message = f"{rejected} LLM span(s) could not be mapped: " + "; ".join(problems)
            if rejected > len(problems):
                message += f"; and {rejected - len(problems)} more"
            log.warning("OTLP ingest: %s", message)
        return IngestResult(total, accepted, rejected, message)


def fast_table_name() -> str:
    from collector.columnar import TABLE

    return TABLE


_WARNED_NO_EXTENSION = False


def _is_retryable(exc: BaseException) -> bool:
    # A rejected statement fails again on replay; everything else (store down) is retried.
    return not isinstance(exc, QueryError)


def _receiver_token(cfg: GovernorConfig) -> str | None:
    env = cfg.ingest.receiver_token_env
    if env is None:
        return None
    token = os.environ.get(env, "")
    if not token:
        # Named but missing: refuse to start rather than silently accept anyone.
        raise ConfigError(
            [
                Problem(
                    cfg.source or "<config>",
                    "ingest.receiver_token_env",
                    f"environment variable {env} is not set or empty",
                )
            ]
        )
    return token


def _pricer(cfg: GovernorConfig, concurrency: ConcurrencySource | None = None) -> Pricer | None:
    try:
        from collector.pricing import Pricer as PricingPricer
    except ImportError:  # pricing not installed in this build
        return None
    pricer: Pricer = PricingPricer.from_config(
        getattr(cfg, "pricing", None), cfg.pools, concurrency=concurrency
    )
    return pricer


def _writer_options(ctx: AppContext) -> dict[str, Any]:
    """``writer:`` settings; the spool defaults to ``spool/`` in the embedded data dir."""
    wcfg = getattr(ctx.config, "writer", None)
    if wcfg is None:
        return {}
    spool: Path | None = None
    if wcfg.spool_dir:
        spool = ctx.config.resolve(wcfg.spool_dir)
    elif isinstance(getattr(ctx.store, "path", None), Path):
        spool = ctx.store.path / "spool"  # type: ignore[attr-defined]
    return {
        "batch_size": wcfg.batch_size,
        # Under load, fewer and larger inserts: the store's cost is largely per insert.
        "backlog_max_rows": 4 * wcfg.batch_size,
        "flush_interval_s": wcfg.flush_interval_s,
        "queue_max": wcfg.queue_max,
        "spool_dir": spool,
        "spool_max_bytes": wcfg.spool_max_bytes,
    }


def shared_writer(ctx: AppContext) -> Sink:
    """The process's one store writer: ``ctx.services["writer"]``, created on first use.

    Every integration that produces rows should call this, so there is one queue, one
    spool and one insert stream per table. The writer is added as a component at creation,
    so it starts before and stops after the producers added later.
    """
    existing: Sink | None = ctx.services.get(WRITER_SERVICE)
    if existing is not None:
        return existing
    from collector.writer import Writer

    writer = Writer(
        ctx.store, is_retryable=_is_retryable, registry=ctx.registry, **_writer_options(ctx)
    )
    ctx.services[WRITER_SERVICE] = writer
    ctx.add(writer)
    return writer


def shared_concurrency(ctx: AppContext) -> ConcurrencyTracker:
    """The process's ``ConcurrencyTracker`` in front of the writer, created on first use.

    The scraper emits through it, so it learns each replica's ``running`` gauge on its
    way to the store, and the OTLP ingest's pricer asks it: a self-hosted request is
    then charged its share of a replica that runs several at once, not the whole
    replica (which overstates cost by the batch size). With no engine scraped for a
    replica, or a reading older than two minutes, the request is charged in full."""
    existing: ConcurrencyTracker | None = ctx.services.get(CONCURRENCY_SERVICE)
    if existing is not None:
        return existing
    from collector.pricing import ConcurrencyTracker

    tracker = ConcurrencyTracker(shared_writer(ctx), clock=ctx.clock.monotonic)
    ctx.services[CONCURRENCY_SERVICE] = tracker
    return tracker


@register_builder
def build_otlp_ingest(ctx: AppContext) -> None:
    cfg = ctx.config
    token = _receiver_token(cfg)
    if token is None and not is_loopback(cfg.server.host):
        log.warning(
            "POST /v1/traces accepts exports without a token on %s; set "
            "ingest.receiver_token_env to require one",
            cfg.server.host,
        )
    writer = shared_writer(ctx)
    ctx.services[SERVICE] = OtlpIngest(
        writer,
        mapping=mapping_from_config(cfg),
        pricer=_pricer(cfg, concurrency=shared_concurrency(ctx)),
        max_body_bytes=cfg.server.otlp_max_body_bytes,
        token=token,
        room=getattr(writer, "room", None),  # the Writer's free places; other sinks: none
        registry=ctx.registry,
        trace_ids=TraceIdPolicy(cfg.store.trace_ids, sample_ratio=cfg.store.trace_id_sample_ratio),
    )


__all__ = [
    "IngestOverloaded",
    "IngestResult",
    "OtlpIngest",
    "build_otlp_ingest",
    "mapping_from_config",
    "shared_concurrency",
    "shared_writer",
]
