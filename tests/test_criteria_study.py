"""benchmarks/criteria.py on a tiny 28x28 model: records, resume, the report's means, spreads and paired differences;
and the calibration variants it measures (uncond_fraction, score_norm) as prune options."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import criteria  # noqa: E402


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    """A 28x28 one-channel UNet (16/32 wide, random weights) saved as a model folder."""
    import torch
    from diffusers import UNet2DModel

    import diffprune
    from diffprune.sources.architectures import DEFAULT_SCHEDULER

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    return diffprune.save(unet, tmp_path_factory.mktemp("tiny") / "dense", scheduler_config=dict(DEFAULT_SCHEDULER))


def test_study_records_resumes_and_reports(tiny_digits, tmp_path):
    spec = criteria.ModelSpec("tiny", str(tiny_digits), "builtin:digits", trained_steps=20,
                              recipe=dict(batch_size=4, lr=1e-3, warmup_steps=1, ema_decay=0.0, kd_weight=1.0),
                              images=20, sampler_steps=2, calibration=4, max_timesteps=3)
    study = criteria.Study(results=tmp_path / "results", work=tmp_path / "work", models={"tiny": spec})
    runs = criteria.grid(["tiny"], ["diff-pruning", "magnitude"], [0, 1], [0.5], [0.1])
    assert [r.key for r in runs[:2]] == ["tiny_diff-pruning_m0.5_b0.1_s0", "tiny_magnitude_m0.5_b0.1_s0"]

    done = criteria.run_study(runs, study)
    assert len(done) == 4 and len(list(study.runs.glob("tiny_*_s*.json"))) == 4
    record = json.loads((study.runs / "tiny_diff-pruning_m0.5_b0.1_s1.json").read_text())
    assert record["finetune_steps"] == 2 and record["timesteps_summed"] <= 3 and record["macs_kept"] <= 0.5
    assert 0 <= record["classes_covered"] <= 10 and record["fid"] > 0 and -1 <= record["ssim_vs_dense"] <= 1
    assert record["cpu_s"] > 0 and (study.runs / "tiny_dense.json").is_file()

    assert criteria.run_study(runs, study) == []  # resumed: every run is recorded, none is redone

    result = criteria.report(study)
    cell = result["summary"]["tiny 0.5 0.1"]["methods"]
    fids = {m: [json.loads((study.runs / f"tiny_{m}_m0.5_b0.1_s{s}.json").read_text())["fid"] for s in (0, 1)]
            for m in ("diff-pruning", "magnitude")}
    assert cell["magnitude"]["fid"]["mean"] == pytest.approx(sum(fids["magnitude"]) / 2)
    assert cell["magnitude"]["fid"]["std"] == pytest.approx(abs(fids["magnitude"][0] - fids["magnitude"][1]) / 2 ** 0.5)
    paired = cell["magnitude"]["fid"]["vs_diff_pruning"]
    assert paired["diffs"] == pytest.approx([m - d for m, d in zip(fids["magnitude"], fids["diff-pruning"])])
    assert paired["method_wins"] == sum(m < d for m, d in zip(fids["magnitude"], fids["diff-pruning"]))
    text = (study.results / "criteria.md").read_text()
    assert "| magnitude | 2 |" in text and (study.results / "criteria.png").stat().st_size > 0


def test_summary_and_sign_test_are_functions_of_numbers():
    rows = [{"model": "m", "macs": 0.5, "budget": 0.1, "method": method, "seed": seed, "fid": fid, "cpu_s": 1.0}
            for method, fids in (("diff-pruning", (10.0, 20.0, 30.0)), ("magnitude", (9.0, 25.0, 28.0)))
            for seed, fid in enumerate(fids)]
    cell = criteria.summarise(rows)["m 0.5 0.1"]["methods"]
    assert cell["diff-pruning"]["fid"] == {"mean": 20.0, "std": 10.0, "n": 3}
    versus = cell["magnitude"]["fid"]["vs_diff_pruning"]
    assert versus["diffs"] == [-1.0, 5.0, -2.0] and versus["method_wins"] == 2  # lower FID wins
    assert versus["sign_p"] == pytest.approx(1.0)
    assert criteria.sign_test(3, 3) == pytest.approx(0.25) and criteria.sign_test(0, 0) is None
    assert criteria.sign_test(10, 10) == pytest.approx(2 / 1024)


def test_methods_and_variants_are_checked():
    from diffprune import DiffPruneError

    assert criteria.parse_method("diff-pruning+uncond0.1") == ("diff-pruning", {"uncond_fraction": 0.1})
    with pytest.raises(DiffPruneError, match="unknown variant"):
        criteria.parse_method("diff-pruning+nonsense")
    with pytest.raises(DiffPruneError, match="unknown criterion"):
        criteria.parse_method("l1")


def test_empty_prompts_replace_the_chosen_share_of_captions():
    from diffprune.pruning.calibration import with_empty_prompts

    captions = [f"digit {i}" for i in range(10)]
    mixed = with_empty_prompts(captions, 0.3, seed=0)
    assert mixed.count("") == 3 and [c for c in mixed if c] == [c for c, m in zip(captions, mixed) if m]
    assert mixed == with_empty_prompts(captions, 0.3, seed=0) != with_empty_prompts(captions, 0.3, seed=1)
    assert with_empty_prompts(captions, 0.0, seed=0) == captions


def test_layer_normalisation_gives_each_coupled_layer_one_vote():
    import torch

    from diffprune.pruning.importance._gradients import taylor_scorer

    # Two coupled layers: the first's scores 1000x the second's. Grouped as they are, the first decides the order;
    # normalised per layer, the second's (reversed) order counts as much.
    big, small = torch.tensor([1.0, 2.0, 3.0]) * 1000, torch.tensor([5.0, 2.0, 1.0])
    idxs = [[0, 1, 2], [0, 1, 2]]
    grouped = taylor_scorer("group")._reduce([big, small], idxs)
    layered = taylor_scorer("layer")._reduce([big, small], idxs)
    assert torch.argsort(grouped).tolist() == [0, 1, 2]
    assert layered[0] > layered[2]  # 1/2 + 5/2.67 > 3/2 + 1/2.67
    from diffprune import DiffPruneError

    with pytest.raises(DiffPruneError, match="score_norm"):
        taylor_scorer("max")


def test_uncond_fraction_is_checked_and_recorded(tiny):
    import diffprune
    from diffprune import DiffPruneError

    with pytest.raises(DiffPruneError, match="uncond_fraction"):
        diffprune.prune(tiny, method="magnitude", ratio=0.5, uncond_fraction=1.5, progress=False)
    with pytest.raises(DiffPruneError, match="text-conditioned model"):  # tiny reads no text
        diffprune.prune(tiny, method="taylor", ratio=0.5, data="builtin:digits", uncond_fraction=0.1, progress=False)
    _, report = diffprune.prune(tiny, method="taylor", ratio=0.5, data="builtin:digits", num_images=2, max_timesteps=2,
                                score_norm="layer", progress=False)
    assert report.score_norm == "layer" and report.uncond_fraction == 0.0
    _, report = diffprune.prune(tiny, method="taylor", ratio=0.5, data="builtin:digits", num_images=2, max_timesteps=2,
                                progress=False)
    assert report.score_norm == "group"  # the default without a latency target (with one: "none")


def test_prune_command_takes_the_variants():
    from diffprune.cli import build_parser

    args = build_parser().parse_args(["prune", "SRC", "OUT", "--uncond-fraction", "0.1", "--score-norm", "layer",
                                      "--timestep-weight", "log"])
    assert (args.uncond_fraction, args.score_norm, args.timestep_weight) == (0.1, "layer", "log")
    defaults = build_parser().parse_args(["prune", "SRC", "OUT"])
    # None: prune resolves it, "none" with a latency target (scores compared across groups), "group" otherwise
    assert (defaults.uncond_fraction, defaults.score_norm, defaults.timestep_weight) == (0.0, None, "loss")
    assert criteria.parse_method("diff-pruning+tlog") == ("diff-pruning", {"timestep_weight": "log"})


def test_latency_variant_prunes_to_the_table_and_keeps_the_model(tiny_digits, tmp_path):
    """"+latency": widths chosen under a latency table (made-up coefficients: nothing is timed here) to the budget
    given, the prediction recorded with the widths, the pruned model kept for the `time` stage; without a table the
    variant is refused with what to give."""
    import diffprune
    from diffprune import DiffPruneError
    from diffprune.latency import model as lm
    from diffprune.latency.profile import layer_rows, planner_for, stages, structure_hash
    from diffprune.runtime.formats import LATENCY_TABLE_FORMAT
    from diffprune.sources.loader import load_source

    unet, _, _ = load_source(str(tiny_digits))
    planner = planner_for(unet)
    rows = layer_rows(planner, 1)
    table = {"format": LATENCY_TABLE_FORMAT, "key": "k", "backend": "ort-cpu", "batch": 1, "threads": None,
             "host": {"cpu": "test"}, "versions": {}, "model": {"structure": structure_hash(unet)}, "resolution": [28, 28],
             "layers": rows, "groups": {g: list(v[:2]) for g, v in planner.steps().items()},
             "coefficients": {"constant_ms": 1.0, "ms_per_gmac": {s: 1000.0 for s in stages(rows)}, "ms_per_melement": 1.0}}
    table["dense_ms"] = lm.predict_ms(table, {})
    (tmp_path / "t.json").write_text(json.dumps(table))

    spec = criteria.ModelSpec("tiny", str(tiny_digits), "builtin:digits", trained_steps=10,
                              recipe=dict(batch_size=4, lr=1e-3, warmup_steps=1, ema_decay=0.0, kd_weight=1.0),
                              images=10, sampler_steps=2, calibration=4, max_timesteps=2)
    run = criteria.Run("tiny", "diff-pruning+latency", 0, 0.5, 0.1)
    study = criteria.Study(results=tmp_path / "results", work=tmp_path / "work", models={"tiny": spec})
    with pytest.raises(DiffPruneError, match="--latency-table"):
        criteria.run_one(run, study, criteria.Judge())

    budget = 0.6 * table["dense_ms"]
    study = criteria.Study(results=tmp_path / "results", work=tmp_path / "work", models={"tiny": spec},
                           latency_table=tmp_path / "t.json", latency_ms=budget)
    record = criteria.run_one(run, study, criteria.Judge())
    assert record["latency"]["budget_ms"] == pytest.approx(budget, rel=1e-3)
    assert record["latency"]["predicted_ms"] <= budget and "measured_ms" not in record["latency"]
    steps = planner.steps()
    assert record["latency"]["predicted_ms"] == pytest.approx(
        lm.predict_ms(table, lm.fractions(record["widths"], steps)), rel=1e-3)
    kept = study.work / run.key / "pruned"
    assert kept.is_dir() and not (study.work / run.key / "tuned").exists()
    pruned, _, _ = load_source(str(kept))
    assert diffprune.sources.unet.count_macs_params(pruned)[0] < diffprune.sources.unet.count_macs_params(unet)[0]

    timed = criteria.time_latency_runs(study, rounds=1)  # exported once each, timed on the table's backend
    assert [r["key"] for r in timed] == [run.key]
    saved = json.loads((study.runs / f"{run.key}.json").read_text())["latency"]
    assert saved["measured_ms"] > 0 and saved["mac_model_ms"] > 0 and saved["compared_with"] == "tiny_diff-pruning_m0.5_b0.1_s0"
