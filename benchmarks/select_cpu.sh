# Joint selection on this CPU over model x scheduler x steps x backend, per image at batch 1:
# quality on the shipped digits model, latency on the digits model itself and on the CIFAR-10 DDPM architecture.
# Run from a folder holding the CIFAR-10 exports of benchmarks/e2e_backends_cpu.sh (it makes them if absent):
#   bash /path/to/benchmarks/select_cpu.sh [THREADS]      about 15 minutes on 2 cores
# Results: benchmarks/results/select_cpu/{digits,digits-fid,cifar10-ssim,cifar10-fid}/ (select.md, select.json, select.png, deploy.json)
set -e
THREADS=${1:-2}
RESULTS="$(cd "$(dirname "$0")" && pwd)/results/select_cpu"
GRID="--scheduler ddim,dpm-solver++ --steps 5,10,20,50 --backend ort-cpu,openvino --threads $THREADS --quiet --overwrite"
date
# 1. Digits: the dense model and a pruned one at 0.56 of its MACs (the CIFAR-10 3.4G model's share of 6.1G),
#    fine-tuned 300 steps (10 % of the dense model's training) with output distillation from the dense model.
#    Quality from 256 seeds: SSIM vs the dense model at DDIM x100, and FID against the 10,000 real digits in the
#    feature space of the shipped digits classifier. The choice ranks by SSIM; the same measurements ranked by
#    FID follow (--quality-from: no sampling again).
diffprune select builtin:digits-ddpm --sweep 0.56 --finetune-steps 300 $GRID --n 256 --budget-ms 15,30,60 \
  --features builtin:digits-features --fid-reference builtin:digits --out select-digits
mkdir -p digits-models && ln -sfn ../select-digits.work/macs-0.56-ft300-onnx digits-models/macs-0.56
diffprune select select-digits.work/dense-onnx digits-models/macs-0.56 $GRID --budget-ms 15,30,60 \
  --quality-from select-digits/select.json --rank fid --out select-digits-fid
# 2. The CIFAR-10 architecture (random weights: latency only), dense 6.1G MACs vs pruned 3.4G, with the digits
#    model's quality scores at the same pruning share (--quality-from; the pruned export is named like the digits one).
[ -d cifar-dense-onnx ] || { diffprune prune arch:ddpm-cifar10-32 cifar-dense --ratio 0 --quiet; diffprune export cifar-dense cifar-dense-onnx --max-batch 16 --opt-batch 8; }
[ -d cifar-pruned-3.4G-onnx ] || { diffprune prune arch:ddpm-cifar10-32 cifar-pruned-3.4G --method magnitude --ratio 0.3 --quiet; diffprune export cifar-pruned-3.4G cifar-pruned-3.4G-onnx --max-batch 16 --opt-batch 8; }
ln -sfn cifar-pruned-3.4G-onnx macs-0.56
for rank in ssim fid; do
  diffprune select cifar-dense-onnx macs-0.56 --quality-from select-digits/select.json --rank $rank $GRID --runs 5 \
    --budget-ms 120,250,500,1000,2000 --out select-cifar10-$rank
done
date
for d in digits digits-fid cifar10-ssim cifar10-fid; do
  mkdir -p "$RESULTS/$d" && cp select-$d/select.md select-$d/select.json select-$d/select.png "$RESULTS/$d"/
  cp select-$d/deploy*.json "$RESULTS/$d"/ 2>/dev/null || true
done
