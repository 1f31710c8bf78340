"""Where in t does the text digits model read its prompt, and where does Diff-Pruning's gradient sum put its weight?

For the study's text model (`builtin:digits-text`) and its calibration (the criteria study's captioned digits, 32
images, seed 0, as `benchmarks/criteria.py` prunes with), at a grid of timesteps t:

- the denoising loss with the captions and with the empty prompt, and the prompt's share of the loss
  ((empty - captioned) / empty): how much the prediction at t depends on the text;
- the norm of the loss's gradient over all weights, and that t's share of the gradient norms summed over t = 0..T
  (T: where Diff-Pruning's thr rule stopped, read from the records), with the paper's weighting (the gradient as it
  is) and with `--timestep-weight log` (each t's gradient over its loss).

    python benchmarks/text_timesteps.py [--work /tmp/criteria-work]

Writes benchmarks/results/criteria/text_timesteps.{json,md}. A few minutes on 2 cores; no training.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "criteria"
SOURCE = str(ROOT / "diffprune" / "assets" / "digits-text")


def measure(work: Path, images: int = 32, every: int = 10, seed: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    from diffprune.pruning.calibration import build_calibration
    from diffprune.pruning.importance._gradients import _targets
    from diffprune.runtime.host import cpu_name
    from diffprune.sources.conditioning import inputs_to
    from diffprune.sources.loader import FromSource, load_source

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from criteria import ModelSpec, Study, _data

    pairs = _data(ModelSpec("text", SOURCE, "captioned", 0, {}, text=True), Study(work=work))
    unet, scheduler_config, _ = load_source(SOURCE)
    unet = unet.float().eval()
    encoder = FromSource(SOURCE, "text_encoder")
    calib = {}
    for name, uncond in (("captions", 0.0), ("empty", 1.0)):
        calib[name], _ = build_calibration(pairs, unet, scheduler_config, images, images, seed, False,
                                           text_encoder=encoder, vae=FromSource(SOURCE, "vae"), uncond_fraction=uncond)
    x0 = calib["captions"].images
    assert torch.equal(x0, calib["empty"].images), "both calibrations must hold the same images"
    alphas, prediction, steps = _targets(scheduler_config)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    assert prediction == "epsilon"
    rows = []
    started = time.perf_counter()
    for t in range(0, steps, every):
        a = alphas[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        timestep = torch.full((x0.shape[0],), t, dtype=torch.long)
        losses = {}
        for name, c in calib.items():
            unet.zero_grad(set_to_none=True)
            loss = F.mse_loss(unet(xt, timestep, **inputs_to(c.inputs, "cpu")).sample.float(), noise)
            if name == "captions":
                loss.backward()
                grad = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in unet.parameters() if p.grad is not None))
            losses[name] = loss.item()
        rows.append({"t": t, "loss_captions": losses["captions"], "loss_empty": losses["empty"],
                     "prompt_share": (losses["empty"] - losses["captions"]) / losses["empty"],
                     "grad_norm": float(grad)})
    records = sorted((OUT / "runs").glob("text_diff-pruning_m0.5_b0.1_s*.json"))
    last = max(json.loads(r.read_text())["last_timestep"] for r in records) if records else steps - 1
    summed = [r for r in rows if r["t"] <= last]
    total = sum(r["grad_norm"] for r in summed)
    total_log = sum(r["grad_norm"] / r["loss_captions"] for r in summed)
    for r in rows:
        inside = r["t"] <= last
        r["weight_share"] = r["grad_norm"] / total if inside else 0.0
        r["weight_share_log"] = r["grad_norm"] / r["loss_captions"] / total_log if inside else 0.0
    return {"source": "builtin:digits-text", "images": images, "seed": seed, "every": every, "last_summed": last,
            "rows": rows, "seconds": round(time.perf_counter() - started, 1), "host": cpu_name(),
            "command": "python benchmarks/text_timesteps.py", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def markdown(result: dict) -> str:
    rows = result["rows"]
    last = result["last_summed"]
    early = [r for r in rows if r["t"] <= last]
    quarter = [r for r in early if r["t"] < 100]
    lines = [
        "# Where the text digits model reads its prompt, and where Diff-Pruning's gradient sum weighs",
        "",
        f"`{result['command']}` on {result['host']}: {result['images']} calibration images of the criteria study "
        f"(seed {result['seed']}), every {result['every']}th timestep; Diff-Pruning's thr rule summed t = 0..{last}.",
        "",
        f"Share of the summed gradient norm from t < 100: {sum(r['weight_share'] for r in quarter):.0%} with the "
        f"paper's weighting, {sum(r['weight_share_log'] for r in quarter):.0%} with --timestep-weight log "
        f"(a uniform weighting would give {len(quarter) / max(len(early), 1):.0%}).",
        "",
        "| t | loss, captions | loss, empty prompt | prompt's share of the loss | gradient norm | weight in the sum | weight, log |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["t"] % 50 == 0 or r["t"] < 50:
            lines.append(f"| {r['t']} | {r['loss_captions']:.4f} | {r['loss_empty']:.4f} | {r['prompt_share']:+.1%} | "
                         f"{r['grad_norm']:.3g} | {r['weight_share']:.1%} | {r['weight_share_log']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/criteria-work"),
                        help="where the captioned digits are (made if missing; default /tmp/criteria-work)")
    parser.add_argument("--every", type=int, default=10, help="timestep stride (default 10)")
    a = parser.parse_args(argv)
    result = measure(a.work, every=a.every)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "text_timesteps.json").write_text(json.dumps(result, indent=1))
    (OUT / "text_timesteps.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
