"""Adapters read each project's documented /metrics output into rows with the right units."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from collector.errors import ScrapeParseError
from collector.scrape_adapters import adapter_for, dcgm_value
from collector.scrape_parse import parse
from collector.scrape_rates import CounterRates
from collector.scrape_targets import Target
from tests.fakes.metrics_server import OPENMETRICS, fixture

MIB = 1024 * 1024
T0 = 1_763_500_000.0


def bump(text: str, sample: str, delta: float, where: str = "") -> str:
    """Add ``delta`` to every ``sample`` line (whose labels contain ``where``)."""

    def repl(m: re.Match[str]) -> str:
        if where and where not in m.group(1):
            return m.group(0)
        return f"{sample}{m.group(1)} {float(m.group(2)) + delta!r}"

    return re.sub(rf"^{re.escape(sample)}(\{{[^}}]*\}}|) (\S+)$", repl, text, flags=re.M)


def setval(text: str, sample: str, value: float, where: str = "") -> str:
    return bump(
        re.sub(
            rf"^({re.escape(sample)}(?:\{{[^}}]*\}}|)) \S+$",
            lambda m: m.group(1) + " 0" if (not where or where in m.group(1)) else m.group(0),
            text,
            flags=re.M,
        ),
        sample,
        value,
        where,
    )


def rows(
    kind: str, text: str, now: float = T0, rates: CounterRates | None = None, **target: str
) -> list:
    t = Target(
        url="http://10.0.3.7:8000/metrics",
        kind=kind,
        pool=target.pop("pool", "chat"),
        replica=target.pop("replica", ""),
        labels=target,
    )
    return adapter_for(kind).records(parse(text), t, now, rates or CounterRates())


def test_vllm_sums_engines_and_averages_kv_cache():
    (r,) = rows("vllm", fixture("vllm.txt"))
    assert (r.engine, r.pool, r.replica) == ("vllm", "chat", "10.0.3.7:8000")
    assert r.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert r.running == 25.0 and r.waiting == 4.0
    assert r.kv_cache_usage == pytest.approx((0.6243 + 0.4817) / 2)
    # Rates need a previous scrape; the first one has none.
    assert r.prompt_tokens_per_s is None and r.generation_tokens_per_s is None
    assert r.up is True


def test_vllm_counters_become_rates_between_scrapes():
    rates = CounterRates()
    text = fixture("vllm.txt")
    rows("vllm", text, T0, rates)
    later = bump(text, "vllm:prompt_tokens_total", 30_000)  # both engines
    later = bump(later, "vllm:generation_tokens_total", 7_500, 'engine="0"')
    later = bump(later, "vllm:num_preemptions_total", 3, 'engine="1"')
    later = bump(later, "vllm:prefix_cache_queries_total", 30_000)
    later = bump(later, "vllm:prefix_cache_hits_total", 7_500)
    (r,) = rows("vllm", later, T0 + 15, rates)
    assert r.prompt_tokens_per_s == pytest.approx(60_000 / 15)
    assert r.generation_tokens_per_s == pytest.approx(7_500 / 15)
    assert r.preemptions_per_s == pytest.approx(3 / 15)
    assert r.prefix_cache_hit_rate == pytest.approx(15_000 / 60_000)


def test_a_restarted_engine_counts_from_zero_not_negative():
    rates = CounterRates()
    text = fixture("vllm.txt")
    rows("vllm", text, T0, rates)
    # Engine 0 restarted and has processed 1200 prompt tokens since; engine 1 grew by 600.
    later = setval(text, "vllm:prompt_tokens_total", 1200.0, 'engine="0"')
    later = bump(later, "vllm:prompt_tokens_total", 600, 'engine="1"')
    (r,) = rows("vllm", later, T0 + 10, rates)
    assert r.prompt_tokens_per_s == pytest.approx((1200 + 600) / 10)


def test_vllm_before_0_9_reads_the_old_kv_cache_name():
    text = "\n".join(
        line for line in fixture("vllm.txt").splitlines() if "kv_cache_usage_perc" not in line
    )
    (r,) = rows("vllm", text)
    assert r.kv_cache_usage == pytest.approx((0.6243 + 0.4817) / 2)


def test_sglang_counts_tensor_parallel_ranks_once():
    (r,) = rows("sglang", fixture("sglang.txt"))
    assert (r.running, r.waiting) == (23.0, 4.0)  # not 46 and 8: two TP ranks report
    assert r.kv_cache_usage == pytest.approx(0.71)
    assert r.model == "Qwen/Qwen2.5-32B-Instruct"
    # No counter baseline yet: the engine's own gauge stands in.
    assert r.prefix_cache_hit_rate == pytest.approx(0.3842)


def test_sglang_hit_rate_comes_from_cached_over_prompt_tokens_once_it_can():
    rates = CounterRates()
    text = fixture("sglang.txt")
    rows("sglang", text, T0, rates)
    later = bump(text, "sglang:prompt_tokens_total", 40_000)
    later = bump(later, "sglang:cached_tokens_total", 10_000)
    later = bump(later, "sglang:generation_tokens_total", 9_000)
    (r,) = rows("sglang", later, T0 + 5, rates)
    assert r.prefix_cache_hit_rate == pytest.approx(0.25)
    assert r.prompt_tokens_per_s == pytest.approx(8_000)
    assert r.generation_tokens_per_s == pytest.approx(1_800)


def test_tgi_queue_and_batch_and_token_rates_from_histogram_sums():
    rates = CounterRates()
    text = fixture("tgi.txt")
    (first,) = rows("tgi", text, T0, rates, model="meta-llama/Llama-3.1-8B-Instruct")
    assert (first.running, first.waiting, first.kv_cache_usage) == (29.0, 6.0, None)
    assert first.model == "meta-llama/Llama-3.1-8B-Instruct"  # TGI has no model label
    later = bump(text, "tgi_request_input_length_sum", 5_000)
    later = bump(later, "tgi_request_generated_tokens_sum", 2_000)
    (r,) = rows("tgi", later, T0 + 10, rates)
    assert r.prompt_tokens_per_s == pytest.approx(500)
    assert r.generation_tokens_per_s == pytest.approx(200)


def test_triton_queue_gauge():
    text = (
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests "
        "awaiting execution per-model.\n"
        "# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="ensemble",version="1"} 3\n'
        'nv_inference_pending_request_count{model="llama",version="1"} 9\n'
    )
    (r,) = rows("triton", text)
    assert (r.waiting, r.running, r.model) == (12.0, None, "ensemble,llama")


def test_dcgm_units_become_base_units_and_sentinels_become_missing():
    loaded, idle = rows("dcgm", fixture("dcgm.txt"))
    assert (loaded.node, loaded.gpu, loaded.source) == ("6d6d7dc3ce21", 0, "dcgm")
    assert loaded.uuid == "GPU-927d7444-b45a-7c49-8402-5e686e46a026"
    assert loaded.name == "NVIDIA H100 80GB HBM3"
    assert loaded.utilization == pytest.approx(0.97)
    assert loaded.memory_used_bytes == 74817 * MIB
    assert loaded.memory_total_bytes == (74817 + 6263) * MIB
    assert loaded.power_w == pytest.approx(386.214)
    assert loaded.energy_j == pytest.approx(1873551946.227)  # mJ -> J
    assert (loaded.temperature_c, loaded.memory_temperature_c) == (59.0, 55.0)
    assert (loaded.sm_clock_mhz, loaded.memory_clock_mhz) == (1980.0, 2619.0)
    assert loaded.replica == "llama-8b-6f9c7d5b8-x2kqp"  # the pod using the GPU
    assert idle.memory_temperature_c is None  # 9223372036854775794: not supported
    assert idle.last_xid == 79 and idle.replica == ""


def test_dcgm_mig_instances_are_separate_devices():
    whole, small, big = rows("dcgm", fixture("dcgm_mig.txt"))
    assert (whole.mig_profile, whole.power_w) == ("", pytest.approx(241.337))
    assert (small.mig_profile, big.mig_profile) == ("1g.10gb", "3g.40gb")
    assert big.node == "gpu-node-7"  # newer lowercase hostname label
    assert big.utilization == pytest.approx(0.874512)  # GR_ENGINE_ACTIVE stands in
    assert big.memory_used_bytes == 28117 * MIB
    assert big.memory_total_bytes == (28117 + 12011) * MIB


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(9223372036854775794.0, None, id="int64 not-supported sentinel is missing"),
        pytest.param(9223372036854775792.0, None, id="int64 blank is missing"),
        pytest.param(140737488355330.0, None, id="fp64 not-supported sentinel is missing"),
        pytest.param(2147483634.0, None, id="int32 not-supported sentinel is missing"),
        pytest.param(1873551946227.0, 1873551946227.0, id="a large energy counter is kept"),
        pytest.param(0.0, 0.0, id="zero is kept"),
    ],
)
def test_dcgm_sentinels(value, expected):
    assert dcgm_value(value) == expected


def test_openmetrics_bodies_parse_when_the_content_type_says_so():
    reg = CollectorRegistry()
    g = Gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        ["model_name", "engine"],
        registry=reg,
    )
    g.labels("m", "0").set(7)
    c = Counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        ["model_name", "engine"],
        registry=reg,
    )
    c.labels("m", "0").inc(100)
    text = openmetrics_latest(reg).decode()
    assert text.rstrip().endswith("# EOF")
    samples = parse(text, OPENMETRICS)
    # prometheus-client escapes ':' to '_' in OpenMetrics names; lookups accept both.
    assert samples.get("vllm:num_requests_running")[0].value == 7.0
    assert samples.get("vllm:prompt_tokens_total")[0].value == 100.0
    (r,) = adapter_for("vllm").records(
        samples, Target("http://h:1/metrics", "vllm"), T0, CounterRates()
    )
    assert (r.running, r.model) == (7.0, "m")


@pytest.mark.parametrize(
    ("text", "content_type", "needle"),
    [
        pytest.param(
            'vllm:num_requests_running{engine="0" 3\n', None, "invalid", id="unterminated label set"
        ),
        pytest.param("<html>502 Bad Gateway</html>\n", None, "invalid", id="an html error page"),
        pytest.param("x 1\n", OPENMETRICS, "invalid", id="openmetrics without EOF"),
    ],
)
def test_a_malformed_body_is_a_parse_error_saying_so(text, content_type, needle):
    with pytest.raises(ScrapeParseError, match=needle):
        parse(text, content_type)
