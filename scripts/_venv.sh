# Sourced by the scripts: create .venv if missing and install the project into it.
# The install is skipped when pyproject.toml has not changed since the last one and the
# project's commands are in place. ROOT is the physical checkout (pwd -P), also when the
# scripts are reached through a link, so .venv always holds an install of that checkout.
#
#   VENV_EXTRA=dev source scripts/_venv.sh    # with pyproject.toml's `dev` extra
#   source scripts/_venv.sh                   # the project alone
#
# It reads no positional argument: bash hands a file sourced without arguments the caller's
# own ones, which are the user's (--keep-running, a service name), never an extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
PY="${PYTHON:-python3}"
extra="${VENV_EXTRA:-}"
case "$extra" in
  "" | dev) ;;
  *) echo "_venv.sh: VENV_EXTRA='$extra' is not an extra of pyproject.toml (dev, or empty)" >&2
     exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "meshid needs Python >= 3.11")'
  "$PY" -m venv .venv
fi
stamp=".venv/.meshid-installed${extra:+-$extra}"
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
# An install with the dev extra installs the project too.
if ! { fresh "$stamp" || { [ -z "$extra" ] && fresh .venv/.meshid-installed-dev; }; } \
   || [ ! -x .venv/bin/mesh ] || [ ! -x .venv/bin/mesh-ca ] || [ ! -x .venv/bin/ca-issue ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
