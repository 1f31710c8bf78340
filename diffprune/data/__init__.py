"""Images for calibration and fine-tuning: folders, arrays, captions and the built-in digits (images.py), data
sets streamed from disk (stream.py), latents of latent models (latents.py), and images drawn from a torch UNet
for ``generate:N`` data and quality checks (generate.py)."""
