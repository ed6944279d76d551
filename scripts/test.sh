#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs the whole suite.
# This is the README's test command; CI (.ci/run) calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian packages: SoftHSM2 (a real PKCS#11 HSM for the HSM tests), Chromium (the console's
# browser test drives it with Playwright; no browser is downloaded), age (its CLI decrypts what
# age:// keys wrapped, as a check independent of pyrage) and PostgreSQL 15 (a real server for the
# PostgreSQL source/target tests, tests/pg_server.py).
missing=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/age ] || missing+=(age)  # the age CLI: an independent check of what age:// keys wrap
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages: sudo apt-get install ${missing[*]}" >&2; exit 1
  fi
fi

# npm: Azurite, the Azure Blob emulator, into .tools/ (git-ignored).
if ! [ -x .tools/node_modules/.bin/azurite-blob ]; then
  npm install --silent --no-audit --no-fund --prefix .tools azurite@3 >/dev/null
fi

python3 -m pip install --quiet -e '.[test]'
ruff check .
mypy strongroom      # types are a gate, not a hope
lint-imports         # the package map's layers (pyproject.toml [tool.importlinter])
python3 -m pytest -q "$@"
