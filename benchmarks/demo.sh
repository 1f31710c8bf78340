#!/usr/bin/env bash
# The README's demo numbers: a fresh `diffprune demo` (no reused stages) on an otherwise idle machine,
# its table, report, latency report and picture copied to benchmarks/results/demo/.
#   bash benchmarks/demo.sh [WORK_FOLDER]   (default /tmp/diffprune-demo; deleted first)
set -euo pipefail
work=${1:-/tmp/diffprune-demo}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work"
start=$(date +%s)
diffprune demo --out "$work" --quiet | tee "$work.log"
echo "demo wall time: $(( $(date +%s) - start )) s" | tee -a "$work.log"
mkdir -p "$here/results/demo"
cp "$work/report.json" "$work/summary.md" "$work/grid.png" "$here/results/demo/"
cp "$work/bench/bench.md" "$here/results/demo/bench.md"
cp "$work.log" "$here/results/demo/demo.log"
