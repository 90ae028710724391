#!/usr/bin/env bash
# Installs pixelllm_d2 with its eval, test and web extras into a virtual environment and runs the test suite on CPU:
# the active one, or else ./.venv (created when missing); never a system Python.
# Extra arguments go to pytest (e.g. `dev/run_tests.sh -k refer`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' 2>/dev/null; then
  [ -x .venv/bin/python ] || { echo "run_tests.sh: creating the virtual environment .venv"; python3 -m venv .venv; }
  . .venv/bin/activate
fi
python -m pip install -q -e ".[eval,test,web]" 2>&1 | { grep -v "is ignored" || true; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest tests -q -rs --durations=15 "$@"
