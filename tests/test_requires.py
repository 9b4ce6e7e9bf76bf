"""A test whose tool is missing skips on a developer's machine and fails under run.sh and CI."""

from __future__ import annotations

import pytest

from tests import requires


@pytest.mark.parametrize(
    ("env", "fails"),
    [
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({requires.REQUIRE_ENV: "1"}, True),
        ({"CI": "false"}, False),
        ({}, False),
    ],
)
def test_require__missing_tool_fails_under_ci_and_run_sh(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fails: bool
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(requires.REQUIRE_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(expected, match="not installed"):
        requires.require(None, "a tool")
    requires.require("/usr/bin/tool", "a tool")  # present: neither
