"""Fine-tuning pruned UNets: the options (config.py, one documented ``FinetuneConfig``), the training loop with
distillation from the dense teacher (finetune.py), what it trains on (examples.py: in-memory, generated and
streamed batches), checkpoints for exact resume (checkpoints.py) and feature distillation (feature_kd.py)."""
