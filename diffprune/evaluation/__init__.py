"""Judging pruned models: quality metrics (metrics.py: SSIM/PSNR vs dense, FID on digits-classifier or
Inception features) and end-to-end latency, dense vs pruned, on a deployment runtime (benchmark.py)."""
