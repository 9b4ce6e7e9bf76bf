import tomllib
from pathlib import Path

import pytest
from yarl import URL

from tests.api_support import NPM_UPSTREAM, call, tokens_in
from tests.conftest import StartServer, isolated_env, run
from tests.smtp import smtp_server
from tokenapi.clientsetup import npmrc_auth_key, snippets
from tokenapi.mail import parse_smtp_url

SECRET = "pkg_" + "a" * 36


def test_parse_smtp_url__variants() -> None:
    plain = parse_smtp_url("smtp://mail.example:2525")
    assert (plain.host, plain.port, plain.use_tls, plain.start_tls) == (
        "mail.example",
        2525,
        False,
        False,
    )
    assert parse_smtp_url("smtp://mail.example").port == 25
    tls = parse_smtp_url("smtps://u%40x:p%3Ass@mail.example")
    assert (tls.port, tls.use_tls, tls.username, tls.password) == (465, True, "u@x", "p:ss")
    assert parse_smtp_url("smtp://mail.example?starttls=true").start_tls is True
    assert "p:ss" not in repr(tls)
    with pytest.raises(ValueError, match="smtps"):
        parse_smtp_url("smtps://mail.example?starttls=true")


def test_clientsetup__npmrc_key_keeps_port_and_path() -> None:
    assert npmrc_auth_key(URL("https://reg.example/base")) == "//reg.example/base/npm/"
    assert npmrc_auth_key(URL("http://127.0.0.1:8080")) == "//127.0.0.1:8080/npm/"


def test_clientsetup__toml_snippets_parse() -> None:
    by_client = {s.client: s for s in snippets(URL("https://reg.example/p"), SECRET)}
    bun = tomllib.loads(by_client["bun"].text)
    assert bun["install"]["registry"] == {"url": "https://reg.example/p/npm/", "token": SECRET}
    uv_toml = by_client["uv"].text.split("# shell")[0]
    (index,) = tomllib.loads(uv_toml)["tool"]["uv"]["index"]
    assert index == {
        "name": "pkgate",
        "url": "https://reg.example/p/pypi/simple/",
        "default": True,
        "authenticate": "always",
    }


def test_clientsetup__yarn_berry_whitelists_a_plain_http_host_only() -> None:
    plain = {s.client: s for s in snippets(URL("http://127.0.0.1:8080"), SECRET)}
    assert 'unsafeHttpWhitelist:\n  - "127.0.0.1"\n' in plain["yarn"].text
    tls = {s.client: s for s in snippets(URL("https://reg.example"), SECRET)}
    assert "unsafeHttpWhitelist" not in tls["yarn"].text


def test_clientsetup__yarn_classic_sends_its_token_with_always_auth() -> None:
    by_client = {s.client: s for s in snippets(URL("http://127.0.0.1:8080/base"), SECRET)}
    assert by_client["yarn classic"].text == (
        "registry=http://127.0.0.1:8080/base/npm/\n"
        f"//127.0.0.1:8080/base/npm/:_authToken={SECRET}\n"
        "//127.0.0.1:8080/base/npm/:always-auth=true\n"
    )


def test_clientsetup__only_enabled_ecosystems() -> None:
    npm_only = snippets(URL("https://r.example"), SECRET, pypi_enabled=False)
    assert [s.client for s in npm_only] == ["npm", "yarn", "yarn classic", "pnpm", "bun"]
    pypi_only = snippets(URL("https://r.example"), SECRET, npm_enabled=False)
    assert [s.client for s in pypi_only] == ["pip", "uv", "poetry"]


async def test_mail__emailed_npmrc_works_with_real_npm(
    start_server: StartServer, tmp_path: Path
) -> None:
    with smtp_server() as mail:
        server = await start_server(npm_upstream=NPM_UPSTREAM, smtp_url=mail.url)
        answer = await call(server, "POST", "/api/v1/tokens", json={"email": "dev@example.com"})
        assert answer.status == 202
        text = mail.inbox.text()
    (secret,) = set(tokens_in(text))
    block = text.split("npm (", 1)[1].split("\n\n", 2)[1]
    npmrc = "\n".join(line.strip() for line in block.splitlines()) + "\n"
    assert secret in npmrc
    home = tmp_path / "home"
    env = isolated_env(home)
    (home / ".npmrc").write_text(npmrc)
    done = await run("npm", "whoami", env=env, cwd=home)
    assert done.returncode == 0, done.output
    assert done.stdout.strip() == "dev@example.com"
