import json

import pytest

from diffprune import DiffPruneError
from diffprune.select import Row, pareto, pick


def rows():
    return [Row("dense", 100, 1.0, 10), Row("a", 60, 0.9, 6), Row("b", 40, 0.8, 4), Row("c", 70, 0.85, 7)]


def test_best_quality_within_budget():
    d = pick(rows(), 65)
    assert d["choice"] == "a" and set(d["fits"]) == {"a", "b"}
    assert pick(rows(), 100)["choice"] == "dense"
    assert pick(rows(), 40)["choice"] == "b"  # the budget is inclusive


def test_ties_go_to_the_faster_then_smaller_model():
    tied = [Row("slow", 50, 0.9, 5), Row("fast", 30, 0.9, 9), Row("fast-small", 30, 0.9, 3)]
    assert pick(tied, 60)["choice"] == "fast-small"


def test_nothing_fits_names_the_closest_and_picks_nothing():
    d = pick(rows(), 10)
    assert d["choice"] is None and d["closest"] == "b" and d["over_by_ms"] == pytest.approx(30)
    assert "Nothing fits 10 ms" in d["message"] and "b" in d["message"] and "300%" in d["message"]


def test_one_candidate():
    assert pick([Row("only", 5, 0.5)], 10)["choice"] == "only"
    assert pick([Row("only", 50, 0.5)], 10)["choice"] is None


def test_pareto_front():
    assert set(pareto(rows())) == {"dense", "a", "b"}  # c is slower and worse than a


def test_bad_input():
    with pytest.raises(DiffPruneError, match="No candidates"):
        pick([], 10)
    with pytest.raises(DiffPruneError, match="must be positive"):
        pick(rows(), 0)


def test_select_end_to_end_on_a_tiny_sweep(tmp_path, tiny_export, capsys):
    from diffprune.cli import main

    out = tmp_path / "sel"
    assert main(["select", "arch:tiny", "--sweep", "0.5", "--budget-ms", "100000", "--steps", "2", "--n", "4",
                 "--runs", "1", "--method", "magnitude", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "select.json").read_text())
    names = {r["name"] for r in result["rows"]}
    assert names == {"dense", "macs-0.5"}
    dense = next(r for r in result["rows"] if r["name"] == "dense")
    assert dense["quality"] == pytest.approx(1.0)
    assert result["choice"] == "dense"  # the budget fits everything: best quality wins
    assert (out / "select.md").is_file()
    assert main(["select", "arch:tiny", "--sweep", "0.5", "--budget-ms", "0.001", "--steps", "2", "--n", "4",
                 "--runs", "1", "--method", "magnitude", "--out", str(tmp_path / "sel2"), "--quiet"]) == 3
    assert "Nothing fits" in capsys.readouterr().out
