# Trains the reference dense DDPM shipped in the package (diffprune/assets/digits-ddpm) with diffprune's
# own trainer, from scratch, on the embedded digits. Run from the repository root:
#   bash benchmarks/train_reference_digits.sh
set -e
diffprune finetune arch:digits diffprune/assets/digits-ddpm --data builtin:digits --steps 3000 --batch-size 32 \
  --lr 5e-4 --warmup-steps 200 --ema-decay 0.999 --checkpoint-every 500 --checkpoint-dir /tmp/digits-ddpm.ckpt \
  --seed 0 --device cpu --overwrite "$@"
