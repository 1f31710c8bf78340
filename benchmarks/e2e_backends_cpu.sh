# End-to-end latency on this CPU, ONNX Runtime against OpenVINO: dense vs pruned CIFAR-10 DDPM architecture
# (random weights; latency does not depend on weight values), 50 DDIM steps, each (model, backend) in its own
# process, runs alternating, the dense diffusers pipeline on PyTorch eager as the baseline, same thread count for all.
# Run from an empty folder: bash /path/to/benchmarks/e2e_backends_cpu.sh [THREADS]
#   about 25 minutes on 2 cores (batch 1: 10 timed runs; batch 8: 5). Results: benchmarks/results/e2e_backends_cpu/
# Backends: ort-cpu (float32), openvino@f32 (float32), openvino (OpenVINO's default precision: bf16 on CPUs with
# bf16 units, float32 elsewhere; the report's "precision" says which ran).
set -e
THREADS=${1:-2}
for spec in "cifar-dense --ratio 0" "cifar-pruned-3.4G --ratio 0.3" "cifar-pruned-half --target-macs 0.5"; do
  set -- $spec
  [ -d "$1" ] || diffprune prune arch:ddpm-cifar10-32 "$1" --method magnitude "$2" "$3" --quiet
  [ -d "$1-onnx" ] || diffprune export "$1" "$1-onnx" --max-batch 16 --opt-batch 8
done
RESULTS="$(cd "$(dirname "$0")" && pwd)/results/e2e_backends_cpu"
mkdir -p "$RESULTS"
date
for batch_runs in "1 10" "8 5"; do
  set -- $batch_runs
  diffprune bench cifar-dense-onnx cifar-pruned-3.4G-onnx cifar-pruned-half-onnx --backend ort-cpu,openvino@f32,openvino \
    --batch "$1" --runs "$2" --steps 50 --threads "$THREADS" --torch-baseline arch:ddpm-cifar10-32 \
    --out "bench-b$1" --overwrite --quiet
  mkdir -p "$RESULTS/batch$1" && cp -r "bench-b$1"/. "$RESULTS/batch$1"/
done
date
