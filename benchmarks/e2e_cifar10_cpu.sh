# End-to-end latency on this CPU: dense vs pruned CIFAR-10 DDPM architecture (random weights), 50 DDIM steps.
# Run from an empty folder: bash benchmarks/e2e_cifar10_cpu.sh  (about 20 minutes on 2 cores)
set -e
diffprune prune arch:ddpm-cifar10-32 cifar-dense --method magnitude --ratio 0 --quiet
diffprune prune arch:ddpm-cifar10-32 cifar-pruned-3.4G --method magnitude --ratio 0.3 --quiet
diffprune prune arch:ddpm-cifar10-32 cifar-pruned-half --method magnitude --target-macs 0.5 --quiet
for m in cifar-dense cifar-pruned-3.4G cifar-pruned-half; do diffprune export $m $m-onnx --max-batch 16 --opt-batch 8; done
date
diffprune bench cifar-dense-onnx cifar-pruned-3.4G-onnx cifar-pruned-half-onnx --backend ort-cpu --batch 1,8 --steps 50 --runs 10 --threads 2 --torch-baseline arch:ddpm-cifar10-32 --out bench-cpu --quiet
cp -r bench-cpu/. "$(dirname "$0")/results/e2e_cpu/" 2>/dev/null || true
date
