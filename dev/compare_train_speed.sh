#!/usr/bin/env bash
# Training speed of this checkout against an earlier commit of it, measured side by side in one run:
#   dev/compare_train_speed.sh BASE_REV [ROUNDS] [ITERS] [CONFIG]
# e.g. dev/compare_train_speed.sh 7a63dea 3 100
# BASE_REV is checked out in a temporary git worktree (removed at the end) and both trees run
# `tools/benchmark.py --task train` on CONFIG (default: the README's main config) in alternating order, ROUNDS times
# each, in the active Python environment (each tree's own package imported via PYTHONPATH). Alternating rounds and
# medians keep a busy or noisy machine from favouring one side. Prints every round, the medians and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: dev/compare_train_speed.sh BASE_REV [ROUNDS] [ITERS] [CONFIG]}
rounds=${2:-3}
iters=${3:-100}
config=${4:-configs/shapes/pixelllm_tiny_shapes.yaml}
here=$(pwd)
tree=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git worktree add --detach -q "$tree" "$base"
# the generated benchmark data is shared (it is not versioned); make it once here
python -c "from pixelllm_d2.data.datasets.shapes import ensure_shapes; ensure_shapes('datasets')" >/dev/null
ln -s "$here/datasets/shapes" "$tree/datasets/shapes"
export HF_HUB_OFFLINE=1
seconds_per_iter() {  # $1: tree
  (cd "$1" && PYTHONPATH="$1" python tools/benchmark.py --config-file "$config" --task train --iters "$iters" --warmup 10 --json 2>/dev/null \
    | python -c "import json, sys; print(f'{1 / json.load(sys.stdin)[\"iters_per_s\"]:.4f}')")
}
base_s=() new_s=()
for r in $(seq "$rounds"); do
  b=$(seconds_per_iter "$tree"); n=$(seconds_per_iter "$here")
  base_s+=("$b"); new_s+=("$n")
  echo "round $r: $base $b s/it, this checkout $n s/it"
done
python - "${#base_s[@]}" "${base_s[@]}" "${new_s[@]}" <<'EOF'
import statistics, sys
n = int(sys.argv[1]); vals = list(map(float, sys.argv[2:]))
b, c = statistics.median(vals[:n]), statistics.median(vals[n:])
print(f"median: base {b:.4f} s/it, this checkout {c:.4f} s/it, ratio {c / b:.3f}")
EOF
