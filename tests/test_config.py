"""governor.yaml validation: the example passes; every broken field is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.config import load_config, parse_config
from controlplane.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "governor.yaml"


def test_the_documented_example_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert [p.name for p in cfg.pools] == ["chat-8b", "code-70b"]
    assert cfg.pools[0].gpu_hour_usd == pytest.approx(2.49)


def test_an_empty_file_gives_working_defaults(tmp_path: Path) -> None:
    f = tmp_path / "g.yaml"
    f.write_text("")
    cfg = load_config(f)
    assert cfg.store.data_dir == "./governor-data"
    assert cfg.server.host == "127.0.0.1"


BROKEN = """\
store: {driver: mysql, retention: {requests_days: 0}}
server: {port: 99999}
pools:
  - name: "bad name"
    engine: vllm
    gpus: 3
  - {name: ok, model: m, min_replicas: 5, max_replicas: 2}
scrape: {targets: [{url: "ftp://x", kind: nope}]}
"""


def test_every_bad_field_is_reported_at_once_with_file_and_path(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    found = {(p.source, p.path) for p in info.value.problems}
    src = str(f)
    assert found >= {
        (src, "store.driver"),
        (src, "store.retention.requests_days"),
        (src, "server.port"),
        (src, "pools[0].name"),
        (src, "pools[0].model"),
        (src, "pools[0].gpus"),
        (src, "pools[1]"),
        (src, "scrape.targets[0].url"),
        (src, "scrape.targets[0].kind"),
    }
    messages = {p.path: p.message for p in info.value.problems}
    assert messages["pools[0].model"] == "required field is missing"
    assert messages["pools[0].gpus"] == "unknown field"
    assert "min_replicas (5) must not exceed max_replicas (2)" in messages["pools[1]"]
    assert "'chdb' or 'clickhouse'" in messages["store.driver"]
    # what was wrong and the value given, not only where
    assert messages["store.retention.requests_days"] == (
        "Input should be greater than or equal to 1 (got 0)")  # fmt: skip
    assert "should match pattern" in messages["pools[0].name"]
    assert "(got 'bad name')" in messages["pools[0].name"]
    assert messages["scrape.targets[0].url"] == (
        "String should match pattern '^https?://' (got 'ftp://x')")  # fmt: skip
    assert "(got 'nope')" in messages["scrape.targets[0].kind"]


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("pools: [{name: a, model: m}, {name: a, model: n}]", "", "repeated: a"),
        ("alerting: {routes: [{receiver: ghost}]}", "alerting", "unknown receivers: ghost"),
        ("- just\n- a list", "", "expected a mapping"),
        ("store: {database: 'x;drop'}", "store.database", "should match pattern"),
    ],
    ids=[
        "duplicate pool names",
        "route to an unknown receiver",
        "top level not a mapping",
        "database name that is not an identifier",
    ],  # fmt: skip
)
def test_semantic_problems_name_their_place(text: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(__import__("yaml").safe_load(text), "cfg.yaml")
    assert any(p.path == path and fragment in p.message for p in info.value.problems), (
        info.value.problems
    )


def test_yaml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("store:\n  driver: [chdb\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    # Governor's own location (PyYAML's text also says "line 3", so check the field)
    (problem,) = info.value.problems
    assert (problem.source, problem.path) == (str(f), "line 3, column 1")
    assert str(info.value).startswith(f"{f}: line 3, column 1: invalid YAML")


def test_config_check_cli_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert "ok (2 pools" in capsys.readouterr().out
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    assert main(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert (
        f"error: {f}: server.port: Input should be less than or equal to 65535 (got 99999)" in err
    )
    assert len(err) >= 9
    missing = tmp_path / "missing.yaml"
    assert main(["config", "check", str(missing)]) == 2
    assert f"error: {missing}: cannot read file: No such file or directory" in (
        capsys.readouterr().err)  # fmt: skip
