#!/usr/bin/env bash
# Creates the Pipecat venv for tests/pipecat/link_pipecat.rs and tests/pipecat/interop_run.rs
# and prints the export line for KIOSK_PIPECAT_PYTHON. Usage (from .ci/run):
#   eval "$(bash tests/interop/setup-venv.sh "${VENV:-$PWD/target/venv-pipecat}")"
set -euo pipefail
venv="${1:?usage: setup-venv.sh VENV_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
echo "export KIOSK_PIPECAT_PYTHON=$venv/bin/python"
