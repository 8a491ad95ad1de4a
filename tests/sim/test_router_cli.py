"""``governor sim ...`` refuses bad arguments with a message naming them (no server starts)."""

from __future__ import annotations

import pytest

from controlplane.cli import main


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        pytest.param(["sim", "router", "--replica", "r0"], 1,
                     "--replica 'r0': expected NAME=http://host:port", id="a replica without URL"),
        pytest.param(["sim", "router", "--limits", "{dir}/limits.yaml"], 2,
                     "limits.yaml: [0].requests_per_s: expected a number > 0 (got 0)",
                     id="an invalid limits file names the entry and field"),
        pytest.param(["sim", "router", "--limits", "{dir}/missing.yaml"], 1,
                     "cannot read limits file", id="a missing limits file"),
        pytest.param(["sim", "loadgen", "--url", "http://127.0.0.1:9", "--pattern",
                      "constant:1", "--tokens", "many"], 1,
                     "--tokens 'many': expected IN:OUT", id="tokens not IN:OUT"),
        pytest.param(["sim", "loadgen", "--url", "http://127.0.0.1:9", "--pattern", "wave:2"],
                     1, "bad traffic pattern 'wave:2'", id="an unknown pattern"),
        pytest.param(["sim", "replica", "--engine", "gpt-9"], 1,
                     "unknown engine configuration 'gpt-9'", id="an unknown engine"),
        pytest.param(["demo", "--replicas", "0", "--rate-multiplier", "0"], 1,
                     "--replicas must be at least 1 (got 0); --rate-multiplier must be > 0",
                     id="the demo names every bad option before starting anything"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_with_a_clear_message(tmp_path, capsys, argv, code, message):
    (tmp_path / "limits.yaml").write_text("- {tenant: a, requests_per_s: 0}\n")
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    assert main(argv) == code
    assert message in capsys.readouterr().err
