"""Latency tables and pruning to a latency (diffprune.latency): the table format and its reader, the prediction,
the fit, the knapsack under couplings (pure, fake tables), an unreachable target, the cache keys. Nothing here
times anything; one test exports and times the tiny UNet on ONNX Runtime for the measured record."""

import json
from pathlib import Path

import pytest

from diffprune.errors import DiffPruneError
from diffprune.latency import model as lm
from diffprune.latency.knapsack import choose_widths, floor_keep
from diffprune.latency.profile import cache_key, keep_at, probe_configs, random_configs
from diffprune.runtime.formats import LATENCY_TABLE_FORMAT, read_latency_table

# Two groups at two stages: g1 sets a 16x16 conv's output (and a 8x8 conv's input); g2 the 8x8 conv's output.
LAYERS = [
    {"name": "a", "stage": "16x16", "macs": 2e9, "elements": 1e6, "out_group": "g1", "in_group": None},
    {"name": "b", "stage": "8x8", "macs": 1e9, "elements": 5e5, "out_group": "g2", "in_group": "g1"},
    {"name": "c", "stage": "8x8", "macs": 1e8, "elements": 1e4, "out_group": None, "in_group": "g2"},
]
COEF = {"constant_ms": 5.0, "ms_per_gmac": {"16x16": 10.0, "8x8": 20.0}, "ms_per_melement": 2.0}


def table(**extra):
    return {"format": LATENCY_TABLE_FORMAT, "key": "k", "backend": "ort-cpu", "batch": 1, "threads": None,
            "host": {"cpu": "test"}, "versions": {}, "model": {"structure": "s"}, "resolution": [16, 16],
            "layers": LAYERS, "groups": {"g1": [4, 8], "g2": [1, 16]}, "coefficients": COEF, "dense_ms": 70.0,
            **extra}


def test_predict_pinned():
    # dense: 5 + 10*2 + 20*1 + 20*0.1 + 2*(1 + 0.5 + 0.01) = 50.02
    assert lm.predict_ms(table(), {}) == pytest.approx(50.02)
    # g1 at half: a's MACs and elements halve, b's MACs halve (its input), b's elements do not
    assert lm.predict_ms(table(), {"g1": 0.5}) == pytest.approx(5 + 10 + 10 + 2 + 2 * (0.5 + 0.5 + 0.01))


def test_fit_recovers_coefficients():
    configs = [{}, {"g1": 0.5}, {"g2": 0.5}, {"g1": 0.25, "g2": 0.75}, {"g1": 0.75, "g2": 0.25}, {"g1": 0.4, "g2": 0.4}]
    measured = [lm.predict_ms(table(), f) for f in configs]
    fitted = lm.fit(LAYERS, ["16x16", "8x8"], configs, measured)
    again = [lm.predict_ms(table(coefficients=fitted), f) for f in configs]
    assert lm.errors(again, measured)["max_abs"] < 1e-6


# A layer fed a concatenation: 24 input channels, 8 set by g1, 12 by g2, 4 fixed (the image's, say).
CONCAT = {"name": "d", "stage": "8x8", "macs": 4e8, "elements": 2e4, "out_group": None, "in_group": "g2",
          "in_channels": 24, "out_channels": 4, "in_parts": {"g1": 8, "g2": 12}}


def test_concat_input_fraction_pinned():
    assert lm.input_fraction(CONCAT, {"g1": 0.5, "g2": 0.25}) == pytest.approx((4 + 8 * 0.5 + 12 * 0.25) / 24)
    assert lm.input_fraction(CONCAT, {}) == 1.0
    assert lm.groups_of(CONCAT) == {"g1", "g2"}
    # The whole call: the old layers as in test_predict_pinned, plus d's 0.4 GMAC at 11/24 of its input.
    f = {"g1": 0.5, "g2": 0.25}
    expected = 5 + 10 * 2 * 0.5 + 20 * 1 * 0.25 * 0.5 + 20 * 0.1 * 0.25 + 20 * 0.4 * 11 / 24 + 2 * (0.5 + 0.5 * 0.25 + 0.01 + 0.02)
    assert lm.predict_ms(table(layers=LAYERS + [CONCAT]), f) == pytest.approx(expected)


def test_table_without_in_parts_predicts_as_before():
    """Rows written before in_parts was recorded (no in_parts, no channel counts) charge the input to in_group
    alone, as their coefficients were fitted: the old formula, to the last digit."""
    old = {k: v for k, v in CONCAT.items() if k not in ("in_parts", "in_channels", "out_channels")}
    f = {"g1": 0.5, "g2": 0.25}
    c = COEF
    by_hand = c["constant_ms"] + sum(c["ms_per_gmac"][r["stage"]] * r["macs"] * f.get(r["out_group"], 1.0)
                                     * f.get(r["in_group"], 1.0) / 1e9 + c["ms_per_melement"] * r["elements"]
                                     * f.get(r["out_group"], 1.0) / 1e6 for r in LAYERS + [old])
    assert lm.predict_ms(table(layers=LAYERS + [old]), f) == by_hand
    assert lm.predict_ms(table(layers=LAYERS + [{**old, "in_parts": {}}]), f) == by_hand


def test_fit_recovers_coefficients_with_concat_layer():
    layers = LAYERS + [CONCAT]
    configs = [{}, {"g1": 0.5}, {"g2": 0.5}, {"g1": 0.25, "g2": 0.75}, {"g1": 0.75, "g2": 0.25}, {"g1": 0.4, "g2": 0.4}]
    measured = [lm.predict_ms(table(layers=layers), f) for f in configs]
    fitted = lm.fit(layers, ["16x16", "8x8"], configs, measured)
    assert fitted["constant_ms"] == pytest.approx(COEF["constant_ms"], rel=1e-6)
    assert fitted["ms_per_gmac"] == pytest.approx(COEF["ms_per_gmac"], rel=1e-6)
    assert fitted["ms_per_melement"] == pytest.approx(COEF["ms_per_melement"], rel=1e-6)


def test_knapsack_charges_every_part_of_a_concatenation():
    """g1 reaches the big concatenated layer only through in_parts: the greedy's running total must count it, or
    it stops above the budget."""
    big = {**CONCAT, "macs": 4e9}
    t = table(layers=LAYERS + [big])
    flat = {"g1": [1.0] * 8, "g2": [1.0] * 16}
    for budget in (60.0, 75.0, 90.0, 110.0):
        choice = choose_widths(t, STEPS, flat, budget_ms=budget)
        assert choice.predicted_ms <= budget + 1e-9
        assert choice.predicted_ms == pytest.approx(lm.predict_ms(t, lm.fractions(choice.keep, STEPS)))
    # Dense 130.06 ms. g2's step (16 -> 8) goes first (31.5 ms for 8 channels) and reaches 98.5 ms; one step of g1
    # (8 -> 6 per channel-group) then saves a's 5.5, b's 2.5 and d's 80 * (8 * 0.25 / 24) = 6.67 ms: 83.8 <= 90.
    # Without d's part, it would count 8 ms, see 90.5 > 90 and take a second step.
    choice = choose_widths(t, STEPS, flat, budget_ms=90.0)
    assert choice.keep == {"g1": 6, "g2": 8} and choice.predicted_ms == pytest.approx(130.06 - 31.5 - 5.5 - 2.5 - 80 / 12)


def test_layer_rows_match_the_pruned_model(tiny_attn):
    """The rows' channel counts and input parts, checked against a real pruning: every Conv2d/Linear of the
    pruned model has out_channels * f_out outputs and in_channels * input_fraction inputs, concatenations too."""
    import torch

    from diffprune.latency.profile import layer_rows, planner_for

    planner = planner_for(tiny_attn)
    rows = layer_rows(planner, 1)
    steps = planner.steps()
    assert any(len(r["in_parts"]) == 2 for r in rows)  # the up blocks' skip concatenations
    keep = keep_at(steps, {g: (0.5, 0.75)[i % 2] for i, g in enumerate(sorted(steps))})
    frac = lm.fractions(keep, steps)
    pruned = dict(planner.apply(keep=keep).named_modules())
    checked = 0
    for r in rows:
        m = pruned.get(r["name"])
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            continue  # attention's products have no module
        out_now = m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
        in_now = m.in_channels if isinstance(m, torch.nn.Conv2d) else m.in_features
        assert out_now == round(r["out_channels"] * frac.get(r["out_group"], 1.0)), r["name"]
        assert in_now == round(r["in_channels"] * lm.input_fraction(r, frac)), r["name"]
        checked += 1
    assert checked > 10


def test_reader_checks_in_parts(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table(layers=LAYERS + [CONCAT])))
    assert read_latency_table(path)["layers"][-1]["in_parts"] == {"g1": 8, "g2": 12}
    for bad in ({**CONCAT, "in_parts": {"g1": 20, "g2": 12}}, {k: v for k, v in CONCAT.items() if k != "in_channels"},
                {**CONCAT, "in_parts": ["g1", "g2"]}):
        path.write_text(json.dumps(table(layers=LAYERS + [bad])))
        with pytest.raises(DiffPruneError, match=r"damaged: layers\[3\]"):
            read_latency_table(path)


def test_errors_median_and_max():
    e = lm.errors([110, 95, 100], [100, 100, 100])
    assert e["relative"] == [0.1, -0.05, 0.0] and e["median_abs"] == 0.05 and e["max_abs"] == 0.1


def test_reader_accepts_written_table(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table()))
    assert read_latency_table(path)["coefficients"] == COEF


@pytest.mark.parametrize("damage, words", [
    (lambda t: t.update(format="diffprune.onnx/1"), "not a latency table"),
    (lambda t: t.pop("coefficients"), "coefficients"),
    (lambda t: t.update(layers=[{"name": "a"}]), "layers[0]"),
    (lambda t: t["coefficients"].update(ms_per_gmac={"16x16": 1.0}), "ms_per_gmac['8x8']"),
    (lambda t: t.pop("host"), "host"),
])
def test_reader_refuses_damaged(tmp_path, damage, words):
    t = json.loads(json.dumps(table()))
    damage(t)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(t))
    with pytest.raises(DiffPruneError, match="latency table|damaged") as e:
        read_latency_table(path)
    assert words in str(e.value)


def test_reader_missing_file(tmp_path):
    with pytest.raises(DiffPruneError, match="does not exist"):
        read_latency_table(tmp_path / "none.json")


STEPS = {"g1": (4, 8, 2), "g2": (1, 16, 8)}  # (channel groups, per, step)


def test_knapsack_meets_budget_on_the_lattice():
    scores = {"g1": list(range(8)), "g2": list(range(16))}
    choice = choose_widths(table(), STEPS, scores, budget_ms=40.0)
    assert choice.predicted_ms <= 40.0
    assert choice.predicted_ms == pytest.approx(lm.predict_ms(table(), lm.fractions(choice.keep, STEPS)))
    for g, (_, per, step) in STEPS.items():
        k = choice.keep[g]
        assert k % step == 0 or k == per  # whole steps: GroupNorm groups and round_to kept
        assert k >= floor_keep(per, step, 0.25)
    assert 0 < choice.retained < 1


def test_knapsack_prunes_where_time_is_cheapest_in_importance():
    # Scores are normalised per group (mean 1 per channel). One step of g1 drops 2 positions x 4 channel-groups = 8
    # channels and saves 10*2*0.25 + 2*1*0.25 + 20*1*0.25 = 10.5 ms (8 / 10.5 = 0.76 per ms); one step of g2 drops 8
    # channels and saves 20*1*0.5 + 2*0.5*0.5 + 20*0.1*0.5 = 11.5 ms (0.70 per ms): g2 goes first, and one step meets 40.
    flat = {"g1": [1.0] * 8, "g2": [1.0] * 16}
    choice = choose_widths(table(), STEPS, flat, budget_ms=40.0)
    assert choice.keep == {"g1": 8, "g2": 8}
    assert choice.predicted_ms == pytest.approx(50.02 - 11.5)
    # Within a group, the positions of lowest score leave first: cheap ones cost little importance.
    skewed = {"g1": [1.0] * 8, "g2": [0.01] * 8 + [1.0] * 8}
    assert choose_widths(table(), STEPS, skewed, budget_ms=40.0).retained > choice.retained


def test_knapsack_ranks_comparable_scores_as_they_are():
    """normalise=False (un-normalised Taylor, score_norm="none"): a group whose channels matter 100x more keeps
    its width and the other pays; normalised, both groups are worth the same and the time per channel decides
    (g2 first, as above)."""
    scores = {"g1": [0.01] * 8, "g2": [1.0] * 16}  # g1's channels barely matter, g2's do
    assert choose_widths(table(), STEPS, scores, budget_ms=40.0).keep == {"g1": 8, "g2": 8}
    raw = choose_widths(table(), STEPS, scores, budget_ms=40.0, normalise=False)
    assert raw.keep["g2"] == 16 and raw.keep["g1"] < 8 and raw.predicted_ms <= 40.0
    flipped = choose_widths(table(), STEPS, {"g1": [1.0] * 8, "g2": [0.01] * 16}, budget_ms=40.0, normalise=False)
    assert flipped.keep["g1"] == 8 and flipped.keep["g2"] < 16


def test_knapsack_keeps_dense_when_budget_allows():
    choice = choose_widths(table(), STEPS, {"g1": [1.0] * 8, "g2": [1.0] * 16}, budget_ms=100.0)
    assert choice.keep == {"g1": 8, "g2": 16} and choice.retained == 1.0


def test_unreachable_target_names_the_floor():
    with pytest.raises(DiffPruneError, match=r"below what this model can reach.*floor.*ms") as e:
        choose_widths(table(), STEPS, {"g1": [1.0] * 8, "g2": [1.0] * 16}, budget_ms=1.0)
    floor = lm.predict_ms(table(), {"g1": 2 / 8, "g2": 8 / 16})
    assert f"{floor:.3g} ms" in str(e.value)


def test_floor_keep():
    assert floor_keep(8, 2, 0.25) == 2 and floor_keep(16, 8, 0.25) == 8 and floor_keep(4, 8, 0.25) == 4
    assert floor_keep(64, 8, 0.25) == 16


def test_keep_at_and_probes_on_the_lattice():
    assert keep_at(STEPS, {"g1": 0.5, "g2": 0.3}) == {"g1": 4, "g2": 8}
    rows = [dict(r) for r in LAYERS]
    configs = probe_configs(STEPS, rows, seed=0, randoms=2)
    labels = [label for label, _ in configs]
    assert labels[:3] == ["dense", "uniform 0.7", "uniform 0.45"]
    assert "stage 16x16 at 0.5" in labels and "stage 8x8 at 0.5" in labels
    assert labels[-1] == "uniform 0.3"  # near the floor, appended last so earlier probes keep their numbers
    assert random_configs(STEPS, 1, 3) != random_configs(STEPS, 2, 3)  # checks are drawn apart from the probes


def test_cache_key_separates_what_changes_latency():
    host = {"cpu": "AMD EPYC", "machine": "x86_64", "cores": 2}
    base = cache_key("s", "ort-cpu", 1, None, host, "onnxruntime 1.0")
    assert base == cache_key("s", "ort-cpu", 1, None, dict(host), "onnxruntime 1.0")
    others = [cache_key("t", "ort-cpu", 1, None, host, "onnxruntime 1.0"),
              cache_key("s", "openvino@f32", 1, None, host, "onnxruntime 1.0"),
              cache_key("s", "ort-cpu", 8, None, host, "onnxruntime 1.0"),
              cache_key("s", "ort-cpu", 1, 2, host, "onnxruntime 1.0"),
              cache_key("s", "ort-cpu", 1, None, {**host, "cpu": "Intel Xeon"}, "onnxruntime 1.0"),
              cache_key("s", "ort-cpu", 1, None, host, "onnxruntime 2.0")]
    assert len({base, *others}) == 7


def _fake_table_for(model, path):
    """A table of the real model's layers and groups with made-up coefficients (no timing)."""
    from diffprune.latency.profile import layer_rows, planner_for, stages, structure_hash

    planner = planner_for(model)
    rows = layer_rows(planner, 1)
    t = table(layers=rows, groups={g: list(v[:2]) for g, v in planner.steps().items()},
              model={"structure": structure_hash(model)},
              coefficients={"constant_ms": 1.0, "ms_per_gmac": {s: 1000.0 for s in stages(rows)}, "ms_per_melement": 1.0})
    t["dense_ms"] = lm.predict_ms(t, {})
    path.write_text(json.dumps(t))
    return t


def test_prune_to_latency_keeps_couplings(tiny_attn, tmp_path):
    """Real groups of a UNet with attention: the chosen widths keep GroupNorm groups and heads equal and widths
    multiples of round_to, the model runs, and the report records the target and prediction."""
    import torch

    from diffprune.latency import LatencyTarget
    from diffprune.pruning.pruner import prune

    t = _fake_table_for(tiny_attn, tmp_path / "t.json")
    target = LatencyTarget(backend="ort-cpu", speedup=1.6, table=str(tmp_path / "t.json"), measure=False)
    model, report = prune(tiny_attn, method="magnitude", latency=target, progress=False)
    lat = report.latency
    assert lat["predicted_ms"] <= t["dense_ms"] / 1.6 + 1e-6 and lat["budget_ms"] == pytest.approx(t["dense_ms"] / 1.6, abs=1e-3)
    assert report.macs_after < report.macs_before
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0, name
        if isinstance(m, torch.nn.Conv2d) and name != "conv_out" and m.out_channels != tiny_attn.get_submodule(name).out_channels:
            assert m.out_channels % 8 == 0, name
        if hasattr(m, "heads") and hasattr(m, "to_q"):
            assert m.to_q.out_features % m.heads == 0 and m.to_q.out_features == m.to_k.out_features == m.to_v.out_features
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 16), torch.tensor([5])).sample
    assert out.shape == (1, 3, 16, 16)


def test_table_of_another_model_is_refused(tiny, tiny_attn, tmp_path):
    from diffprune.latency import LatencyTarget
    from diffprune.pruning.pruner import prune

    _fake_table_for(tiny_attn, tmp_path / "t.json")
    target = LatencyTarget(backend="ort-cpu", speedup=1.5, table=str(tmp_path / "t.json"), measure=False)
    with pytest.raises(DiffPruneError, match="another model structure"):
        prune(tiny, method="magnitude", latency=target, progress=False)


def test_structure_survives_save_and_load(tmp_path):
    """A model built from its config, the same model saved and loaded, and the committed digits table's model
    share one structure hash (saving adds _class_name to the config; a table profiled before saving still fits)."""
    import diffprune
    from diffprune.latency.profile import structure_hash
    from diffprune.sources.loader import load_source
    from diffprune.sources.unet import build_unet

    model = build_unet("tiny")
    before = structure_hash(model)
    model.save_pretrained(tmp_path / "saved")
    assert structure_hash(model) == before
    loaded, _, _ = load_source(str(tmp_path / "saved"))
    assert structure_hash(loaded) == before
    assert structure_hash(build_unet("tiny-attn")) != before

    digits, _, _ = load_source(str(Path(diffprune.__file__).parent / "assets" / "digits-ddpm"))
    committed = Path(__file__).parents[1] / "benchmarks" / "results" / "latency" / "digits-ort-b8.json"
    assert json.loads(committed.read_text())["model"]["structure"] == structure_hash(digits)


def test_cli_unreachable_target_writes_nothing(tiny_attn, tmp_path, capsys):
    from diffprune.cli import main

    _fake_table_for(tiny_attn, tmp_path / "t.json")
    out = tmp_path / "pruned"
    code = main(["prune", "arch:tiny-attn", str(out), "--method", "magnitude", "--target-ms", "0.001",
                 "--backend", "ort-cpu", "--latency-table", str(tmp_path / "t.json"), "--quiet", "--device", "cpu"])
    assert code == 2 and not out.exists()
    assert "floor" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--target-speedup", "2"], "needs the backend"),
    (["--target-speedup", "0.5", "--backend", "ort-cpu"], "out of range"),
    (["--backend", "ort-cpu"], "belong to a latency target"),
])
def test_cli_refuses_bad_latency_options(tmp_path, capsys, argv, words):
    from diffprune.cli import main

    code = main(["prune", "arch:tiny", str(tmp_path / "p"), "--method", "magnitude", *argv])
    assert code == 2 and words in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_measured_record_on_ort(tiny, tmp_path):
    """The one timed test: the tiny UNet pruned against a fake table is exported and timed on ONNX Runtime, and
    the record carries the measured time beside the prediction."""
    from diffprune.latency import LatencyTarget
    from diffprune.pruning.pruner import prune

    _fake_table_for(tiny, tmp_path / "t.json")
    target = LatencyTarget(backend="ort-cpu", speedup=1.3, table=str(tmp_path / "t.json"))
    _, report = prune(tiny, method="magnitude", latency=target, progress=False)
    assert report.latency["measured_ms"] > 0 and report.latency["measured_precision"] == "f32"
    assert "measured" in report.table()


def test_drift_correction_divides_by_the_reference_at_each_moment():
    """A reference drifting 100 -> 120 ms over a pass: probes timed at 0.5x and 0.8x of it come out as 0.5x and
    0.8x of its median, not as what the clock read; without references each probe's fastest pass is kept."""
    from diffprune.latency.profile import drift_corrected

    one_pass = ([(1, 52.5), (3, 92.0)], [(0, 100.0), (2, 110.0), (4, 120.0)])
    assert drift_corrected([one_pass]) == pytest.approx([55.0, 88.0])
    second = ([(1, 50.0), (3, 80.0)], [(0, 100.0), (4, 100.0)])  # a quiet pass: ratios 0.5 and 0.8 again
    assert drift_corrected([one_pass, second]) == pytest.approx([50.0, 80.0])  # the references' median: 100
    assert drift_corrected([([(0, 5.0), (1, 7.0)], []), ([(0, 6.0), (1, 6.5)], [])]) == [5.0, 6.5]
