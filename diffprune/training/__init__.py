"""Fine-tuning pruned UNets: the training loop with distillation from the dense teacher (finetune.py) and
feature distillation at the UNet's block outputs (feature_kd.py)."""
