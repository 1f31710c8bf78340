"""Judging pruned models: quality metrics (metrics.py: SSIM/PSNR vs dense, FID on digits-classifier or
Inception features), one model evaluated as deployed (evaluate.py: ``diffprune eval``'s API, and
``as_artifact``, a model source as the export the runtime runs) and end-to-end latency, dense vs pruned, on
a deployment runtime (benchmark.py)."""
