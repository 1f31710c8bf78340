"""diffprune's pipeline export against optimum's, on the parts optimum knows: the CLIP text encoder(s)
and the VAE decoder of a Stable Diffusion (XL) pipeline folder. Same inputs through both graphs on ONNX
Runtime; prints max-abs differences, file sizes, node counts and export times.

    python benchmarks/compare_optimum.py [SRC] [--out DIR]     # SRC: a pipeline folder or arch:tiny-sd (default)

Needs optimum's ONNX exporter (``optimum.exporters.onnx``, in the optimum-onnx package). Its 0.1 release
requires transformers < 4.58, which cannot be installed beside this project's transformers 5
(huggingface/optimum-onnx#114), so here the script says so and exits 0; README "Export a pipeline" says why
the exporter is diffprune's own. With ``--out`` the numbers go to DIR/optimum_compare.{json,md}.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def optimum_exporter():
    """optimum's main_export, or None with the reason it is unavailable."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        return None, (f"optimum's ONNX exporter is not importable ({e}). optimum-onnx 0.1 pins transformers < 4.58; "
                      "this environment has transformers 5 (see huggingface/optimum-onnx#114).")
    return main_export, None


def _graph(path: Path) -> dict:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))
    return {"nodes": len(proto.graph.node), "megabytes": round(size / 1e6, 2),
            "inputs": [i.name for i in proto.graph.input], "outputs": [o.name for o in proto.graph.output]}


def compare(src: str, work: Path) -> dict:
    """Export ``src`` with both exporters into ``work`` and compare the shared components."""
    import numpy as np
    import onnxruntime as ort

    from diffprune.export import export_pipeline
    from diffprune.export.pipeline import save_pipeline_folder
    from diffprune.runtime.text import ClipTokenizer

    main_export, why = optimum_exporter()
    if main_export is None:
        return {"skipped": why}
    folder = Path(src)
    if src.startswith("arch:"):
        folder = save_pipeline_folder(src[len("arch:"):], work / "pipeline")
    started = time.perf_counter()
    record = export_pipeline(folder, work / "diffprune", batch=(1, 1, 2), progress=None)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    main_export(str(folder), output=str(work / "optimum"), task="text-to-image", device="cpu")
    theirs_s = time.perf_counter() - started
    rows = {}
    prompts = ["", "a photograph of an astronaut riding a horse"]
    for name in [n for n in record["components"] if n.startswith("text_encoder")]:
        tokenizer = ClipTokenizer.from_folder(work / "diffprune" / record["tokenizers"][name])
        ids = tokenizer(prompts).ids
        ours_path, theirs_path = work / "diffprune" / name / "model.onnx", work / "optimum" / name / "model.onnx"
        ours = dict(zip(["hidden_states", "text_embeds"],
                        ort.InferenceSession(str(ours_path), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})))
        session = ort.InferenceSession(str(theirs_path), providers=["CPUExecutionProvider"])
        feed = {i.name: ids.astype(np.int32 if "int32" in i.type else np.int64) for i in session.get_inputs()}
        theirs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        # optimum names the layers: last_hidden_state (after the final norm), hidden_states.N per layer (SDXL)
        layers = sorted((int(k.split(".")[1]) for k in theirs if k.startswith("hidden_states.")), reverse=True)
        if record["text"]["layer"] == "last":
            want = theirs.get("last_hidden_state")
        else:
            want = theirs.get(f"hidden_states.{layers[1]}") if len(layers) > 1 else None  # the penultimate layer
        diff = {"hidden_states": float(np.abs(ours["hidden_states"] - want).max()) if want is not None else None}
        if "text_embeds" in ours:
            pooled = theirs.get("text_embeds")
            diff["text_embeds"] = float(np.abs(ours["text_embeds"] - pooled).max()) if pooled is not None else None
        rows[name] = {"max_abs": diff, "diffprune": _graph(ours_path), "optimum": _graph(theirs_path)}
    latent = record["latent"]
    z = np.random.default_rng(0).standard_normal((1, latent["channels"], *latent["sample_size"])).astype(np.float32)
    z /= latent["scaling_factor"]
    out = {}
    for who, path in (("diffprune", work / "diffprune" / "vae_decoder" / "model.onnx"),
                      ("optimum", work / "optimum" / "vae_decoder" / "model.onnx")):
        out[who] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"latent_sample": z})[0]
    rows["vae_decoder"] = {"max_abs": {"sample": float(np.abs(out["diffprune"] - out["optimum"]).max())},
                           "diffprune": _graph(work / "diffprune" / "vae_decoder" / "model.onnx"),
                           "optimum": _graph(work / "optimum" / "vae_decoder" / "model.onnx")}
    return {"source": src, "export_seconds": {"diffprune": round(ours_s, 1), "optimum": round(theirs_s, 1)},
            "components": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", default="arch:tiny-sd")
    parser.add_argument("--out", help="write optimum_compare.json and .md here")
    a = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="diffprune-optimum-") as work:
        result = compare(a.src, Path(work))
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        return 0
    lines = [f"# diffprune vs optimum ONNX export ({result['source']})", "",
             f"export seconds: diffprune {result['export_seconds']['diffprune']}, optimum {result['export_seconds']['optimum']}",
             "", "| component | output | max-abs diff | nodes (diffprune / optimum) | MB (diffprune / optimum) |",
             "|---|---|---|---|---|"]
    for name, row in result["components"].items():
        for output, diff in row["max_abs"].items():
            lines.append(f"| {name} | {output} | {'n/a' if diff is None else f'{diff:.2e}'} | "
                         f"{row['diffprune']['nodes']} / {row['optimum']['nodes']} | "
                         f"{row['diffprune']['megabytes']} / {row['optimum']['megabytes']} |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "optimum_compare.json").write_text(json.dumps(result, indent=1))
        (Path(a.out) / "optimum_compare.md").write_text("\n".join(lines) + f"\n\nCommand: python benchmarks/compare_optimum.py {a.src}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
