from pathlib import Path

import pytest

from proxy.settings import Settings, SettingsError, load, unknown_env
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
    result = await run(
        *pkgate_cmd("serve", "--no-discover", "--data-dir", str(tmp_path)),
        env={"PATH": "/usr/bin"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "npm_upstream" in lines[0]
    assert "npm config get registry" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("port = 8080.9", "port"),
        ("workers = 2.7", "workers"),
        ("workers = 2.0", "workers"),
        ("registry_auth_failures = 1e3", "registry_auth_failures"),
        ("metadata_cache_bytes = 1048576.5", "metadata_cache_bytes"),
        ("metadata_cache_bytes = 1048576.0", "metadata_cache_bytes"),
        ('artifact_cache_bytes = "0.5"', "artifact_cache_bytes"),
        ("port = true", "port"),
    ],
)
def test_load__non_integers_are_refused_in_one_line(tmp_path: Path, line: str, named: str) -> None:
    cfg = tmp_path / "pkgate.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(SettingsError) as err:
        load({"config": str(cfg)}, env={})
    message = str(err.value)
    assert message.startswith(f"{named} ({named} in {cfg}): expected ")
    assert "\n" not in message


@pytest.mark.parametrize("value", ["8080.9", "80 80", "0x50", ""])
def test_load__non_integer_port_from_environment_is_refused(value: str) -> None:
    if value == "":
        assert load({}, env={"PKGATE_PORT": value}).port == 8080  # empty means unset
        return
    with pytest.raises(SettingsError, match=r"^port \(PKGATE_PORT\): expected an integer"):
        load({}, env={"PKGATE_PORT": value})


def test_load__whole_sizes_in_any_unit(tmp_path: Path) -> None:
    cfg = tmp_path / "pkgate.toml"
    cfg.write_text('metadata_cache_bytes = 1048576\nartifact_cache_bytes = "1.5GiB"\n')
    s = load({"config": str(cfg)}, env={"PKGATE_WORKERS": " 3 "})
    assert (s.metadata_cache_bytes, s.artifact_cache_bytes, s.workers) == (1048576, 1610612736, 3)


def test_unknown_env__every_unknown_pkgate_variable_with_a_hint() -> None:
    env = {
        "PKGATE_PORT": "1",
        "PKGATE_CONFIG": "x.toml",
        "PKGATE_BLOKLIST_FEEDS": "x",
        "PKGATE_LOGLEVEL": "debug",
        "PKGATE_ZZZ": "1",
        "OTHER_PORT": "1",
    }
    lines = unknown_env(env)
    assert lines[0].startswith("unknown environment variable PKGATE_BLOKLIST_FEEDS is ignored")
    assert lines[1] == (
        "unknown environment variable PKGATE_LOGLEVEL is ignored (did you mean PKGATE_LOG_LEVEL?)"
    )
    assert lines[2] == "unknown environment variable PKGATE_ZZZ is ignored"
    assert len(lines) == 3


async def test_serve__warns_about_a_mistyped_variable_at_start_up(tmp_path: Path) -> None:
    result = await run(
        *pkgate_cmd("serve", "--no-discover", "--data-dir", str(tmp_path)),
        env={"PATH": "/usr/bin", "PKGATE_LOGLEVEL": "debug"},
    )
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "pkgate: warning: unknown environment variable PKGATE_LOGLEVEL is ignored "
        "(did you mean PKGATE_LOG_LEVEL?)"
    )


def test_database_url__default_is_the_sqlite_file_in_data_dir(tmp_path) -> None:
    from proxy.settings import load

    s = load({"data_dir": str(tmp_path)}, env={})
    assert s.database == tmp_path / "pkgate.db"


def test_database_url__postgresql_is_kept_and_masked_in_describe() -> None:
    from proxy.settings import load

    s = load({"database_url": "postgresql://u:hunter2secret@db:5432/pkgate"}, env={})
    assert s.database == "postgresql://u:hunter2secret@db:5432/pkgate"
    assert "hunter2secret" not in str(s.describe())


def test_database_url__sqlite_url_names_the_file(tmp_path) -> None:
    from proxy.settings import load

    s = load({"database_url": f"sqlite:///{tmp_path}/x.db"}, env={})
    assert s.database == tmp_path / "x.db"
    assert s.db_path == tmp_path / "x.db"


def test_database_url__other_schemes_are_refused() -> None:
    import pytest

    from proxy.settings import SettingsError, load

    with pytest.raises(SettingsError, match="database_url"):
        load({"database_url": "mysql://u:p@h/db"}, env={})
