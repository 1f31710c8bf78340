"""Latency tables and pruning to a latency (diffprune.latency): the table format and its reader, the prediction,
the fit, the knapsack under couplings (pure, fake tables), an unreachable target, the cache keys. Nothing here
times anything; one test exports and times the tiny UNet on ONNX Runtime for the measured record."""

import json

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
