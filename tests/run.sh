#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs pkgate and its test dependencies into .venv,
# the pinned package-manager clients into .tools, then runs ruff, mypy and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
PYTHON=.venv/bin/python bash tests/tools/install.sh

# System packages the tests drive, from the distribution (CI runs this as root on Debian):
#   nginx-light      the TLS reverse-proxy and two-instance deploy tests
#   systemd          systemd-analyze verify of deploy/pkgate.service
#   postgresql       the store tests on PostgreSQL (SPEC 17); tests/pg.py starts a throwaway
#                    cluster as an unprivileged user
#   chromium         the web page tests (never a browser a test tool downloads)
#   jq, curl         the README's CI jobs, run by tests/test_oidc_clients.py
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
  || missing+=(postgresql)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
browser=()  # Chromium with its recommended packages (fonts)
[ -x /usr/bin/chromium ] || browser+=(chromium)
if [ ${#missing[@]} -gt 0 ] || [ ${#browser[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: ${missing[*]} ${browser[*]} missing and cannot be installed" \
      "(not root or no apt-get)" >&2
    exit 1
  fi
  apt=(apt-get -o DPkg::Lock::Timeout=300 -y -qq)
  "${apt[@]}" update
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}"
  fi
  if [ ${#browser[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${browser[@]}"
  fi
fi
# Under run.sh no test skips for a missing tool: it fails instead (tests/requires.py).
export PKGATE_REQUIRE_TOOLS=1

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
