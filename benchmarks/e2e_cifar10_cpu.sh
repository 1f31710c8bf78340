# End-to-end latency on this CPU: dense vs pruned CIFAR-10 DDPM architecture (random weights), 50 DDIM steps.
# Run from an empty folder: bash /path/to/benchmarks/e2e_cifar10_cpu.sh [THREADS [BATCHES]]
#   defaults 2 threads, batches 1,8: about 25 minutes on 2 cores. Results go to benchmarks/results/e2e_cpu
#   (2 threads) or benchmarks/results/e2e_cpu_${THREADS}thread.
# Each model is served by its own process and the timed runs alternate between them (see diffprune.runtime.bench).
set -e
THREADS=${1:-2}
BATCHES=${2:-1,8}
for spec in "cifar-dense --ratio 0" "cifar-pruned-3.4G --ratio 0.3" "cifar-pruned-half --target-macs 0.5"; do
  set -- $spec
  [ -d "$1" ] || diffprune prune arch:ddpm-cifar10-32 "$1" --method magnitude "$2" "$3" --quiet
  [ -d "$1-onnx" ] || diffprune export "$1" "$1-onnx" --max-batch 16 --opt-batch 8
done
date
OUT=bench-cpu-${THREADS}thread
diffprune bench cifar-dense-onnx cifar-pruned-3.4G-onnx cifar-pruned-half-onnx --backend ort-cpu --batch "$BATCHES" --steps 50 \
  --runs 10 --threads "$THREADS" --torch-baseline arch:ddpm-cifar10-32 --out "$OUT" --overwrite --quiet
RESULTS="$(cd "$(dirname "$0")" && pwd)/results/e2e_cpu"
[ "$THREADS" = 2 ] || RESULTS="${RESULTS}_${THREADS}thread"
mkdir -p "$RESULTS" && cp -r "$OUT"/. "$RESULTS"/
date
