"""Targets from config and from Prometheus file_sd files, re-read when they change."""

from __future__ import annotations

import json
import logging
import os

import pytest

from collector.scrape_targets import (
    DiscoveryError,
    FileDiscovery,
    merge,
    parse_file_sd,
    static_targets,
)


def write(path, data, mtime=None):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


GROUPS = [
    {
        "targets": ["10.0.0.1:8000", "10.0.0.2:8000"],
        "labels": {"kind": "vllm", "pool": "chat", "model": "llama"},
    },
    {"targets": ["gpu-node-1:9400"], "labels": {"kind": "dcgm", "__metrics_path__": "/metrics"}},
]


def test_file_sd_json_gives_one_target_per_address_with_group_labels(tmp_path):
    f = tmp_path / "targets.json"
    write(f, GROUPS)
    d = FileDiscovery([f])
    assert d.refresh() is True
    ts = d.targets()
    assert [t.url for t in ts] == [
        "http://10.0.0.1:8000/metrics",
        "http://10.0.0.2:8000/metrics",
        "http://gpu-node-1:9400/metrics",
    ]
    assert (ts[0].kind, ts[0].pool, ts[0].labels["model"], ts[0].source) == (
        "vllm",
        "chat",
        "llama",
        str(f),
    )
    assert ts[0].instance == "10.0.0.1:8000"
    assert "__metrics_path__" not in ts[2].labels


def test_file_sd_yaml_with_scheme_and_path(tmp_path):
    f = tmp_path / "targets.yaml"
    write(
        f,
        "- targets: ['tgi.internal:443']\n  labels:\n    kind: tgi\n    __scheme__: https\n"
        "    __metrics_path__: prom\n",
    )
    d = FileDiscovery([f])
    d.refresh()
    assert [t.url for t in d.targets()] == ["https://tgi.internal:443/prom"]


def test_a_changed_file_is_reread_and_an_unchanged_one_is_not(tmp_path):
    f = tmp_path / "t.json"
    write(f, GROUPS[:1], mtime=1_000)
    d = FileDiscovery([f])
    d.refresh()
    before = [t.url for t in d.targets()]
    # Other targets, same size and mtime: the file is not read again (a discovery
    # directory with many files costs a stat each per refresh, not a parse).
    f.write_text(f.read_text().replace("10.0.0.1:8000", "10.0.0.7:8000"))
    os.utime(f, (1_000, 1_000))
    assert d.refresh() is False
    assert [t.url for t in d.targets()] == before
    write(f, [{"targets": ["10.0.0.9:8000"], "labels": {"kind": "sglang"}}], mtime=2_000)
    assert d.refresh() is True
    assert [t.url for t in d.targets()] == ["http://10.0.0.9:8000/metrics"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param('[{"targets": ["a:1"', "not valid JSON/YAML", id="truncated JSON"),
        pytest.param(
            '{"targets": []}', "expected a list of target groups", id="an object instead of a list"
        ),
        pytest.param(
            '[{"targets": "a:1", "labels": {"kind": "vllm"}}]',
            "[0].targets: expected a list",
            id="targets not a list",
        ),
        pytest.param(
            '[{"targets": ["a:1"], "labels": {"kind": "llamacpp"}}]',
            "label 'kind' must be one of",
            id="unknown kind",
        ),
        pytest.param(
            '[{"targets": ["a:1"], "labels": {"kind": "vllm", "x": 3}}]',
            "[0].labels: expected a mapping of strings",
            id="non-string label",
        ),
        pytest.param(
            '[{"targets": ["http://a:1"], "labels": {"kind": "vllm"}}]',
            "expected host:port",
            id="a URL instead of host:port",
        ),
    ],
)
def test_a_bad_file_is_logged_by_name_and_keeps_its_previous_targets(
    tmp_path, caplog, content, problem
):
    f = tmp_path / "pool.json"
    write(f, GROUPS[:1], mtime=1_000)
    d = FileDiscovery([f])
    d.refresh()
    before = d.targets()
    write(f, content, mtime=2_000)
    with caplog.at_level(logging.ERROR, logger="collector.scrape_targets"):
        assert d.refresh() is False
    assert d.targets() == before
    assert problem in d.errors[str(f)]
    assert str(f) in caplog.text and problem in caplog.text
    # Fixed again: the error clears and the new targets apply.
    write(f, [{"targets": ["10.0.0.3:8000"], "labels": {"kind": "vllm"}}], mtime=3_000)
    assert d.refresh() is True and d.errors == {}


def test_a_missing_file_is_an_error_not_a_crash(tmp_path):
    d = FileDiscovery([tmp_path / "nope.json"])
    assert d.refresh() is False
    assert d.targets() == []
    assert "cannot read" in d.errors[str(tmp_path / "nope.json")]


def test_parse_error_names_the_file():
    with pytest.raises(DiscoveryError, match=r"^sd\.json: expected a list"):
        parse_file_sd("3", "sd.json")


def test_static_targets_come_first_when_a_url_is_listed_twice(tmp_path):
    static = static_targets(
        [{"url": "http://10.0.0.1:8000/metrics", "kind": "vllm", "pool": "static-pool"}]
    )
    f = tmp_path / "t.json"
    write(f, GROUPS[:1])
    d = FileDiscovery([f])
    d.refresh()
    merged = merge(static, d.targets())
    assert [(t.url, t.pool) for t in merged] == [
        ("http://10.0.0.1:8000/metrics", "static-pool"),
        ("http://10.0.0.2:8000/metrics", "chat"),
    ]
