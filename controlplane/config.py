"""``governor.yaml``: one file, validated at load, every problem reported at once.

Secrets never live here: credentials and tokens come from the environment only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controlplane import conventions as cv
from controlplane.errors import ConfigError, Problem


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetentionConfig(_Model):
    requests_days: int = Field(30, ge=1)
    samples_days: int = Field(30, ge=1)
    rollups_days: int = Field(400, ge=1)  # per-hour rollups
    # Per-minute rollups serve window edges and Timeslices SLIs: keep them a little longer
    # than the longest SLO window (calendar months are 31 days), not for a year.
    minute_rollups_days: int = Field(35, ge=1)


class CompactionConfig(_Model):
    """The hourly rollups' compaction job (``controlplane/store/compaction.py``)."""

    enabled: bool = True
    # Daily at this hour (UTC): a quiet one, since a merge takes a core for seconds.
    hour_utc: int = Field(3, ge=0, le=23)
    max_parts: int = Field(1, ge=1)  # partitions with more parts than this are merged


class StoreConfig(_Model):
    driver: Literal["chdb", "clickhouse"] | None = None  # None: clickhouse if a URL is set
    data_dir: str = cv.DEFAULT_DATA_DIR
    url: str | None = None  # http(s)://host:8123; credentials from the environment
    database: str = Field(cv.DEFAULT_DATABASE, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    connect_timeout_s: float = Field(10.0, gt=0)
    query_timeout_s: float = Field(30.0, gt=0)
    async_insert: bool = False
    retention: RetentionConfig = RetentionConfig()
    compaction: CompactionConfig = CompactionConfig()
    # Which request rows keep trace/span ids (24 incompressible bytes a row): exemplars
    # (errors, slow requests and a sample; see collector/exemplars.py), all, or none.
    trace_ids: Literal["all", "exemplars", "none"] = "exemplars"
    trace_id_sample_ratio: float = Field(0.01, ge=0, le=1)


class KubernetesTarget(_Model):
    namespace: str
    deployment: str


class PoolConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str
    engine: Literal["vllm", "sglang", "tgi", "triton"] = "vllm"
    endpoints: list[str] = []
    kubernetes: KubernetesTarget | None = None
    gpu_type: str = "H100"
    gpus_per_replica: int = Field(1, ge=1)
    gpu_hour_usd: float = Field(0.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                f"({self.max_replicas})"
            )
        return self


class ScrapeTarget(_Model):
    url: str = Field(pattern=r"^https?://")
    kind: Literal["vllm", "sglang", "tgi", "triton", "dcgm", "agent"]
    pool: str = ""
    replica: str = ""  # engines: default host:port; GPU exporters: the pod label, if any
    model: str = ""  # for engines whose metrics carry no model label (TGI)
    node: str = ""  # for GPU exporters whose metrics carry no host label


class ScrapeConfig(_Model):
    interval_s: float = Field(15.0, gt=0)
    timeout_s: float = Field(5.0, gt=0)
    concurrency: int = Field(8, ge=1)
    targets: list[ScrapeTarget] = []
    file_sd: list[str] = []  # JSON/YAML files with targets, re-read on change


class AlertRoute(_Model):
    receiver: str
    match: dict[str, str] = {}
    # Label -> regular expression, anchored at both ends as in Alertmanager.
    match_re: dict[str, str] = {}
    group_by: list[str] = ["alertname", "slo"]  # ["..."] groups by every label
    group_wait_s: float = Field(30.0, ge=0)
    group_interval_s: float = Field(300.0, gt=0)
    repeat_interval_s: float = Field(14400.0, gt=0)
    continue_: bool = Field(False, alias="continue")

    @model_validator(mode="after")
    def _regexes_compile(self) -> AlertRoute:
        import re

        bad = []
        for name, pattern in self.match_re.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                bad.append(f"match_re.{name}: invalid regular expression {pattern!r}: {exc}")
        if bad:
            raise ValueError("; ".join(bad))
        return self


class Receiver(_Model):
    name: str
    kind: Literal["webhook", "pagerduty", "slack", "alertmanager"]
    url: str = Field(pattern=r"^https?://")
    # Names of environment variables holding secrets (never the secrets themselves).
    secret_env: str | None = None
    routing_key_env: str | None = None
    send_resolved: bool = True
    timeout_s: float = Field(default=10.0, gt=0)


class AlertingConfig(_Model):
    routes: list[AlertRoute] = []
    receivers: list[Receiver] = []
    external_url: str = "http://127.0.0.1:8080"
    # Re-push firing alerts to an Alertmanager at most this often (Prometheus'
    # --rules.alert.resend-delay, 60 there); 0 pushes every evaluation.
    resend_delay_s: float = Field(default=0.0, ge=0)
    # Delivery: exponential backoff with full jitter, then the dead letters.
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    retry_max_attempts: int = Field(default=12, ge=1)
    retry_max_age_s: float = Field(default=6 * 3600.0, gt=0)
    tick_s: float = Field(default=1.0, gt=0)  # how often groups are flushed and deliveries sent

    @model_validator(mode="after")
    def _routes_name_receivers(self) -> AlertingConfig:
        names = {r.name for r in self.receivers}
        dupes = sorted(
            {r.name for r in self.receivers if [x.name for x in self.receivers].count(r.name) > 1}
        )
        if dupes:
            raise ValueError(f"receiver names must be unique, repeated: {', '.join(dupes)}")
        missing = [r.receiver for r in self.routes if r.receiver not in names]
        if missing:
            raise ValueError(f"routes name unknown receivers: {', '.join(sorted(set(missing)))}")
        return self


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    otlp_max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)


SpanKindName = Literal["unspecified", "internal", "server", "client", "producer", "consumer"]


class IngestConfig(_Model):
    """How LLM spans become request rows (``collector.genai``) and who may send them.

    Each ``*_keys`` list is tried in order, in span attributes then resource attributes.
    """

    pool_keys: list[str] = ["governor.pool", "k8s.deployment.name", "service.name"]
    replica_keys: list[str] = [
        "governor.replica", "service.instance.id", "k8s.pod.name", "host.name",
    ]  # fmt: skip
    model_keys: list[str] = ["gen_ai.response.model", "gen_ai.request.model"]
    tenant_keys: list[str] = ["governor.tenant", "tenant.id", "tenant"]
    priority_keys: list[str] = ["governor.priority", "priority"]
    default_pool: str = ""  # when no key matches and no configured pool serves the model
    keep_attributes: list[str] = [
        "gen_ai.request.id", "gen_ai.response.id", "gen_ai.operation.name",
        "gen_ai.provider.name", "gen_ai.system", "server.address",
    ]  # fmt: skip
    span_kinds: list[SpanKindName] = ["unspecified", "internal", "server", "client"]
    # Name of the environment variable holding the OTLP receiver's bearer token; when
    # set, POST /v1/traces requires ``Authorization: Bearer <token>``.
    receiver_token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None


class ModelPriceConfig(_Model):
    """USD per 1M tokens for API models whose name matches ``match`` (first match wins)."""

    match: str = Field(min_length=1)  # glob (``gpt-4o*``), or a regex when ``regex: true``
    regex: bool = False
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    cached_input_usd_per_mtok: float | None = Field(default=None, ge=0)  # None: input price

    @model_validator(mode="after")
    def _pattern_compiles(self) -> ModelPriceConfig:
        if self.regex:
            import re

            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"match {self.match!r} is not a valid regex: {exc}") from None
        return self


class PricingConfig(_Model):
    """API price tables; self-hosted pools are priced by ``pools[].gpu_hour_usd``."""

    models: list[ModelPriceConfig] = []


class WriterConfig(_Model):
    """The store writer (``collector.writer.Writer``) that ``serve`` feeds rows through."""

    batch_size: int = Field(default=50_000, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    queue_max: int = Field(default=250_000, ge=1)
    spool_dir: str | None = None  # None: <store.data_dir>/spool; relative to the config file
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)


class GovernorConfig(_Model):
    store: StoreConfig = StoreConfig()
    server: ServerConfig = ServerConfig()
    pools: list[PoolConfig] = []
    slos: str | None = None  # SLO file or directory, relative to the config file
    scrape: ScrapeConfig = ScrapeConfig()
    alerting: AlertingConfig = AlertingConfig()
    ingest: IngestConfig = IngestConfig()
    pricing: PricingConfig = PricingConfig()
    writer: WriterConfig = WriterConfig()
    evaluation_interval_s: float = Field(default=10.0, gt=0)
    # Where the file was loaded from, to resolve relative paths; not a YAML key.
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _unique_pools(self) -> GovernorConfig:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique, repeated: {', '.join(dupes)}")
        return self

    def resolve(self, relative: str) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        p = Path(relative)
        return p if p.is_absolute() else base / p


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_from(exc: ValidationError, source: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(Problem(source, _path(loc), msg))
    return problems


def parse_config(data: Any, source: str = "<config>") -> GovernorConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(source, "", "expected a mapping at the top level")])
    try:
        return GovernorConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, source)) from None


def load_config(path: str | os.PathLike[str]) -> GovernorConfig:
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([Problem(source, "", f"cannot read file: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([Problem(source, where, f"invalid YAML: {exc}")]) from None
    return parse_config(data, source)
