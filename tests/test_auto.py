"""``--backend auto``: the choice (a function of numbers), the probe (with fake runners and a fake clock), the
cache (its key and its reuse), and the real thing on the tiny export."""

import json
import shutil

import numpy as np
import pytest

from diffprune.errors import DiffPruneError
from diffprune.runtime.auto import PROBE_CALLS, TOLERANCE, Trial, auto_choice, cache_key, choose, key_fields, probe


# -- the choice ------------------------------------------------------------------------------------------

def test_the_fastest_agreeing_backend_is_chosen():
    trials = [Trial("ort-cpu", ms=10.0, diff=0.0), Trial("openvino@f32", ms=8.0, diff=1e-6),
              Trial("openvino@bf16", ms=5.0, diff=0.08), Trial("ort-cuda", error="not installed")]
    chosen, reason = choose(trials)
    assert chosen == "openvino@f32"
    assert reason.startswith("openvino@f32: 8.0 ms per UNet call, the fastest of 2 agreeing with float32")
    assert "openvino@bf16 5.0 ms but its images differ by 0.08 > 0.02" in reason and "ort-cpu 10.0 ms" in reason


def test_bf16_is_not_chosen_where_it_is_slower():
    # On a Xeon with bf16 units but no AMX, bf16 was 1.5x slower than f32 (issue 23): agreeing is not enough.
    trials = [Trial("ort-cpu", ms=52.7, diff=0.0), Trial("openvino@f32", ms=54.0, diff=0.0),
              Trial("openvino@bf16", ms=80.8, diff=0.004)]
    assert choose(trials)[0] == "ort-cpu"
    trials[2] = Trial("openvino@bf16", ms=30.0, diff=0.004)  # where it is faster and agrees, it is chosen
    assert choose(trials)[0] == "openvino@bf16"


def test_equal_times_keep_the_earlier_candidate_and_dicts_are_read():
    assert choose([{"backend": "ort-cpu", "ms": 5.0, "diff": 0.0}, {"backend": "openvino@f32", "ms": 5.0, "diff": 0.0}])[0] == "ort-cpu"


def test_no_agreeing_backend_is_a_clear_error():
    with pytest.raises(DiffPruneError, match="found no backend .* ort-cpu: broken; openvino@bf16: images differ by 0.5"):
        choose([Trial("ort-cpu", error="broken"), Trial("openvino@bf16", ms=1.0, diff=0.5)])


# -- the probe, with fake runners and time ---------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeRunner:
    """A UNet of 4 channels at 8x8 that takes ``seconds`` per call on ``clock`` and returns 0.1 x sample + bias."""

    def __init__(self, backend, clock, seconds, bias=0.0, fail=False):
        self.backend, self.seconds, self.clock, self.bias, self.fail = backend, seconds, clock, bias, fail
        self.batch_range, self.in_channels, self.sample_size = (1, 4), 4, (8, 8)
        self.scheduler_config, self.conditioning, self.inputs, self.info, self.batches = {}, [], {}, {}, []

    def __enter__(self):
        if self.fail:
            raise DiffPruneError("Backend x cannot compile this graph. More text.")
        return self

    def __exit__(self, *exc):
        pass

    def __call__(self, sample, timestep):
        self.clock.now += self.seconds
        self.batches.append(len(sample))
        return (0.1 * sample + self.bias).astype(np.float32)


def fakes(clock, **specs):
    runners = {name.replace("_", "@"): FakeRunner(name.replace("_", "@"), clock, *args)
               for name, args in specs.items()}
    return runners, lambda artifact, spec, threads=None: runners[spec]


def test_probe_times_every_call_but_the_first_and_compares_images_with_the_reference():
    clock = Clock()
    runners, opener = fakes(clock, **{"ort-cpu": (0.5,), "openvino_f32": (0.3,), "openvino_bf16": (0.15, 0.3)})
    trials = probe("unused", list(runners), opener, batch=8, steps=4, clock=clock)
    assert [t.backend for t in trials] == ["ort-cpu", "openvino@f32", "openvino@bf16"]
    assert [t.ms for t in trials] == pytest.approx([500.0, 300.0, 150.0])
    assert trials[0].diff == 0.0 and trials[1].diff == 0.0 and trials[2].diff > TOLERANCE
    assert runners["ort-cpu"].batches == [4] * 4  # the batch clipped to the runner's range, one call per step
    # a faster backend is called again until PROBE_SECONDS are timed: 0.9 s after 3 timed steps, 1 more call
    assert len(runners["openvino@f32"].batches) == 5 and len(runners["openvino@bf16"].batches) == 8
    assert choose(trials)[0] == "openvino@f32"  # the fake fast bf16 differs, so the next fastest wins


def test_a_fast_backend_is_timed_at_most_probe_calls_times():
    clock = Clock()
    runners, opener = fakes(clock, **{"ort-cpu": (0.001,)})
    (trial,) = probe("unused", ["ort-cpu"], opener, steps=3, clock=clock)
    assert len(runners["ort-cpu"].batches) == PROBE_CALLS and trial.ms == pytest.approx(1.0)


def test_a_backend_that_fails_is_recorded_and_passed_over():
    clock = Clock()
    runners, opener = fakes(clock, **{"ort-cpu": (0.010,), "openvino_f32": (0.001, 0.0, True)})
    trials = probe("unused", list(runners), opener, steps=3, clock=clock)
    assert trials[1].error == "Backend x cannot compile this graph" and trials[1].ms is None
    assert choose(trials)[0] == "ort-cpu"


# -- the cache -------------------------------------------------------------------------------------------

def test_the_key_changes_with_each_thing_the_choice_depends_on():
    base = dict(digest="a" * 64, threads=2, batch=8, steps=6, tolerance=0.02, cpu="AMD EPYC",
                installed={"onnxruntime": "1.32.0", "openvino": "2026.4"})
    key = cache_key(key_fields(**base))
    assert key == cache_key(key_fields(**base))
    for change in (dict(digest="b" * 64), dict(threads=1), dict(batch=1), dict(steps=3), dict(tolerance=0.05),
                   dict(cpu="Intel Xeon"), dict(installed={"onnxruntime": "1.33.0", "openvino": "2026.4"})):
        assert cache_key(key_fields(**{**base, **change})) != key, change


def _counting_measure(times: dict):
    calls = []

    def measure(folder, specs, threads=None, batch=None, steps=None):
        calls.append((str(folder), tuple(specs), threads, batch))
        return [Trial(s, ms=times[s], diff=0.0) for s in specs]

    return measure, calls


def test_the_choice_is_cached_per_artifact_and_threads_and_reused(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_CACHE", str(tmp_path / "cache"))
    measure, calls = _counting_measure({"ort-cpu": 3.0, "slow": 9.0})
    lines = []
    first = auto_choice(tiny_export, threads=2, specs=["ort-cpu", "slow"], measure=measure, log=lines.append)
    assert first["chosen"] == "ort-cpu" and not first["cached"] and len(calls) == 1
    assert lines == [first["line"]] and first["line"].startswith("auto -> ort-cpu: 3.0 ms per UNet call")
    again = auto_choice(tiny_export, threads=2, specs=["ort-cpu", "slow"], measure=measure)
    assert again["cached"] and again["chosen"] == "ort-cpu" and len(calls) == 1  # not measured again
    stored = json.loads((tmp_path / "cache" / "auto" / f"{first['key']}.json").read_text())
    assert stored["format"] == "diffprune.auto-choice/1" and [t["ms"] for t in stored["trials"]] == [3.0, 9.0]
    assert stored["fields"]["threads"] == 2 and stored["fields"]["batch"] == 4  # clipped to the export's 1..4

    auto_choice(tiny_export, threads=1, specs=["ort-cpu"], measure=measure)  # other threads: measured again
    assert len(calls) == 2
    changed = tmp_path / "changed"
    shutil.copytree(tiny_export, changed)
    with open(changed / "model.onnx", "ab") as f:  # other content, same folder layout
        f.write(b"\0")
    assert auto_choice(changed, threads=2, specs=["ort-cpu"], measure=measure)["key"] != first["key"]
    assert len(calls) == 3
    (tmp_path / "cache" / "auto" / f"{first['key']}.json").write_text("{not json")  # damaged: measured again
    assert not auto_choice(tiny_export, threads=2, specs=["ort-cpu", "slow"], measure=measure)["cached"]
    assert len(calls) == 4
    assert auto_choice(tiny_export, threads=2, specs=["ort-cpu", "slow"], measure=measure, refresh=True)["cached"] is False


# -- the real thing ----------------------------------------------------------------------------------------

def test_open_runner_auto_measures_installed_backends_and_says_why(tiny_export, tmp_path, monkeypatch, capsys):
    from diffprune.cli import main
    from diffprune.runtime import open_runner
    from diffprune.runtime.auto import candidates

    monkeypatch.setenv("DIFFPRUNE_CACHE", str(tmp_path / "cache"))
    with open_runner(tiny_export, "auto") as runner:
        auto = runner.auto
        assert runner.backend == auto["chosen"] or runner.backend == auto["chosen"].split("@")[0] + "@f32"
    specs = [t["backend"] for t in auto["trials"]]
    assert specs == candidates("onnx") and specs[0] == "ort-cpu"
    assert all(t["error"] is None and t["ms"] > 0 for t in auto["trials"])
    assert all(t["diff"] < 1e-4 for t in auto["trials"] if t["backend"] in ("ort-cpu", "openvino@f32"))
    out = tmp_path / "grid.png"
    assert main(["sample", str(tiny_export), "--n", "1", "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"auto -> {auto['chosen']}" in printed and "cached in" in printed  # the sample reused the measurement
