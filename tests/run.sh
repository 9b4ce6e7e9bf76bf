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

.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
