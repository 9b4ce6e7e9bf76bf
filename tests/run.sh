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

# System tools the deploy/ tests use: nginx (TLS reverse-proxy test) and systemd-analyze.
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # A failed install is not fatal: the deploy checks that need the tool say they were skipped.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      || echo "tests/run.sh: could not install ${missing[*]}; their deploy checks will be skipped" >&2
  else
    echo "tests/run.sh: cannot install ${missing[*]} (not root or no apt-get); their deploy checks will be skipped" >&2
  fi
fi

# PostgreSQL for the store tests (SPEC §17): the distribution's server package; the tests start a
# throwaway cluster themselves (tests/pg.py) as an unprivileged user. Under run.sh they never skip.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends postgresql
  else
    echo "tests/run.sh: PostgreSQL is missing and cannot be installed (not root or no apt-get)" >&2
    exit 1
  fi
fi
export PKGATE_REQUIRE_POSTGRES=1

# The web page tests drive the distribution's Chromium (never a browser a test tool downloads).
if ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium
  else
    echo "tests/run.sh: Chromium is missing and cannot be installed (not root or no apt-get)" >&2
    exit 1
  fi
fi

# The README's CI jobs (GitHub Actions, GitLab CI) are run by tests/test_oidc_clients.py: curl, jq.
if ! command -v jq >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
      --no-install-recommends jq curl
  else
    echo "tests/run.sh: jq or curl is missing and cannot be installed (not root or no apt-get)" >&2
    exit 1
  fi
fi

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
