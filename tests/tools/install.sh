#!/usr/bin/env bash
# Installs the package-manager clients the integration tests drive, at pinned versions, into
# .tools/ at the top of the checkout (or $PKGATE_TOOLS).  Idempotent: a finished install leaves
# a stamp naming the versions, and a second run with the same versions does nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
dest=${PKGATE_TOOLS:-$top/.tools}
python=${PYTHON:-python3}

# Pinned client versions (bump deliberately; the tests document the behaviour of these).
PNPM_VERSION=10.34.8
YARN_VERSION=4.18.1
BUN_VERSION=1.4.4
PIP_VERSION=26.3
UV_VERSION=0.13.8
POETRY_VERSION=2.5.1
# yarn classic (1.x): its own folder and stamp, so adding or bumping it never reinstalls the rest.
YARN1_VERSION=1.22.22

install_yarn1() {
  local stamp="yarn1=$YARN1_VERSION"
  if [ -f "$dest/yarn1/.stamp" ] && [ "$(cat "$dest/yarn1/.stamp")" = "$stamp" ]; then
    return 0
  fi
  rm -rf "$dest/yarn1"
  mkdir -p "$dest/yarn1" "$dest/bin"
  cat > "$dest/yarn1/package.json" <<JSON
{"name": "pkgate-test-yarn1", "private": true, "version": "0.0.0"}
JSON
  (cd "$dest/yarn1" && npm install --no-audit --no-fund --no-package-lock --loglevel=error \
    "yarn@$YARN1_VERSION" >&2)
  ln -sf "$dest/yarn1/node_modules/yarn/bin/yarn.js" "$dest/bin/yarn1"
  printf 'yarn1 %s\n' "$("$dest/bin/yarn1" --version 2>&1 | head -1)" >&2
  echo "$stamp" > "$dest/yarn1/.stamp"
}

stamp_text="pnpm=$PNPM_VERSION yarn=$YARN_VERSION bun=$BUN_VERSION pip=$PIP_VERSION uv=$UV_VERSION poetry=$POETRY_VERSION"
if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp_text" ]; then
  install_yarn1
  exit 0
fi

rm -rf "$dest"
mkdir -p "$dest/node"
echo "installing test clients into $dest" >&2

# Node clients: local installs, no lockfile written.
cat > "$dest/node/package.json" <<JSON
{"name": "pkgate-test-clients", "private": true, "version": "0.0.0"}
JSON
(cd "$dest/node" && npm install --no-audit --no-fund --no-package-lock --loglevel=error \
  "pnpm@$PNPM_VERSION" "@yarnpkg/cli-dist@$YARN_VERSION" "bun@$BUN_VERSION" >&2)

# Python clients: one virtual environment each, so none disturbs the project's own.
for spec in "pip:pip==$PIP_VERSION" "uv:uv==$UV_VERSION" "poetry:poetry==$POETRY_VERSION"; do
  name=${spec%%:*}
  req=${spec#*:}
  "$python" -m venv "$dest/$name-venv"
  "$dest/$name-venv/bin/python" -m pip install --quiet --disable-pip-version-check "$req" >&2
done

mkdir -p "$dest/bin"
ln -sf "$dest/node/node_modules/.bin/pnpm" "$dest/bin/pnpm"
ln -sf "$dest/node/node_modules/@yarnpkg/cli-dist/bin/yarn.js" "$dest/bin/yarn"
ln -sf "$dest/node/node_modules/.bin/bun" "$dest/bin/bun"
ln -sf "$dest/pip-venv/bin/pip" "$dest/bin/pip"
ln -sf "$dest/uv-venv/bin/uv" "$dest/bin/uv"
ln -sf "$dest/poetry-venv/bin/poetry" "$dest/bin/poetry"

for tool in pnpm yarn bun pip uv poetry; do
  printf '%s %s\n' "$tool" "$("$dest/bin/$tool" --version 2>&1 | head -1)" >&2
done
install_yarn1
echo "$stamp_text" > "$dest/.stamp"
