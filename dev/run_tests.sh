#!/usr/bin/env bash
# Installs pixelllm_d2 with its eval and test extras into the current Python and runs the test suite on CPU.
# Extra arguments go to pytest (e.g. `dev/run_tests.sh -k refer`).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[eval,test]" 2>&1 | { grep -v "is ignored" || true; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest tests -q -rs --durations=15 "$@"
