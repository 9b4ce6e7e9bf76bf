from pathlib import Path

import pytest

from proxy.settings import Settings, SettingsError, load
from tests.conftest import pkgate_cmd, run


def test_load__defaults() -> None:
    s = load({}, env={})
    assert (s.host, s.port, s.anonymous, s.token_cache_ttl, s.last_used_flush) == (
        "127.0.0.1",
        8080,
        "deny",
        60.0,
        1.0,
    )
    assert str(s.base_url) == "http://127.0.0.1:8080"


def test_load__flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    cfg = tmp_path / "pkgate.toml"
    cfg.write_text('port = 1111\nhost = "0.0.0.0"\nanonymous = "allow"\ntoken_cache_ttl = 5\n')
    env = {"PKGATE_PORT": "2222", "PKGATE_HOST": "10.0.0.1"}
    s = load({"port": "3333", "config": str(cfg)}, env=env)
    assert s.port == 3333
    assert s.host == "10.0.0.1"
    assert s.anonymous == "allow"
    assert s.token_cache_ttl == 5.0


def test_load__upstream_gets_trailing_slash() -> None:
    s = load({"npm_upstream": "http://127.0.0.1:4873"}, env={})
    assert s.npm_upstream == "http://127.0.0.1:4873/"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"port": "abc"}, "port"),
        ({"port": "70000"}, "port"),
        ({"anonymous": "maybe"}, "anonymous"),
        ({"npm_upstream": "ftp://x/"}, "npm_upstream"),
        ({"npm_upstream": "http://u:p@host/"}, "npm_upstream"),
        ({"last_used_flush": "0"}, "last_used_flush"),
        ({"trusted_proxies": "not-a-cidr"}, "trusted_proxies"),
        ({"smtp_url": "http://mail/"}, "smtp_url"),
    ],
)
def test_load__bad_value_names_the_setting(flags: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(flags, env={})
    assert str(err.value).startswith(named)
    assert "\n" not in str(err.value)


def test_load__unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        load({"config": str(cfg)}, env={})


def test_settings__are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_describe__masks_smtp_credentials() -> None:
    s = load({"smtp_url": "smtp://user:hunter2@mail.example.com:25"}, env={})
    assert "hunter2" not in str(s.describe())


async def test_serve__without_upstream_fails_with_one_line(tmp_path: Path) -> None:
    result = await run(*pkgate_cmd("serve", "--data-dir", str(tmp_path)), env={"PATH": "/usr/bin"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "npm_upstream" in lines[0]
    assert "npm config get registry" in lines[0]
    assert "Traceback" not in result.stderr
