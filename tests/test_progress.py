"""Progress where no bar can be drawn: with stderr not a terminal (CI logs, nohup, pipes) the bars are off,
and long stages print a plain line now and then; the flat-loss warning gives an honest upper bound."""

import time

import pytest

import diffprune
from diffprune import _io


@pytest.fixture
def every_line(monkeypatch):
    monkeypatch.setattr(_io, "PROGRESS_EVERY_S", 0.0)  # a line at every chance, instead of once a minute
    monkeypatch.setattr(_io, "_last_line", [0.0])


def test_prune_timestep_loop_prints_progress_lines(every_line, capsys):
    from diffprune.sources.unet import build_unet

    diffprune.prune(build_unet("tiny"), method="diff-pruning", data="builtin:digits", num_images=2, max_timesteps=3,
                    ratio=0.3, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prune: importance timestep")]
    assert lines and lines[0].startswith("prune: importance timestep 1/at most 3, ")  # the loop may stop sooner
    assert " elapsed, at most " in lines[0] and " left, loss " in lines[0] and "(stops below " in lines[0]


def test_finetune_prints_progress_lines_and_quiet_silences_them(every_line, capsys, tmp_path):
    from diffprune.training.finetune import finetune
    from diffprune.sources.unet import build_unet

    common = dict(data="builtin:digits", steps=2, batch_size=2, num_images=4, warmup_steps=1, checkpoint_every=0)
    finetune(build_unet("tiny"), tmp_path / "a", progress=True, **common)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fine-tune: step")]
    assert lines[0].startswith("fine-tune: step 1/2, ") and " elapsed, about " in lines[0] and ", loss " in lines[0]
    finetune(build_unet("tiny"), tmp_path / "b", progress=False, **common)
    assert "fine-tune: step" not in capsys.readouterr().err


def test_a_stage_without_its_own_lines_gets_a_heartbeat(monkeypatch, capsys):
    monkeypatch.setattr(_io, "PROGRESS_EVERY_S", 0.05)
    monkeypatch.setattr(_io, "_last_line", [0.0])
    with _io.heartbeat("demo: [export dense]"):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("demo: [export dense]: still running, ") for line in lines)
    with _io.heartbeat("demo: [export dense]", enabled=False):
        time.sleep(0.15)
    assert capsys.readouterr().err == ""


def test_the_flat_loss_warning_gives_an_upper_bound_at_the_recent_pace(capsys):
    from diffprune.pruning.importance._gradients import _warn_if_the_loss_will_not_fall

    # The demo's prune once said "about 46 more minutes" and took 6: the first timesteps' warm-up set the
    # pace, and the loss fell after all. Now: the recent pace, and said to be a bound.
    _warn_if_the_loss_will_not_fall([0.5] * 20, stop_below=0.05, steps=1000, pace=0.36)
    err = capsys.readouterr().err
    assert "at most 980 more, up to 5.9 min at the last 10 timesteps' pace (0.36 s each)" in err
    assert "may still fall and stop it much sooner" in err and "--max-timesteps" in err
    _warn_if_the_loss_will_not_fall([0.5 * 0.8 ** k for k in range(20)], stop_below=0.05, steps=1000, pace=0.36)
    assert capsys.readouterr().err == ""  # falling fast enough: no warning


def test_durations_read_in_the_unit_of_the_wait():
    assert [_io.duration(s) for s in (42, 210, 7200)] == ["42 s", "3.5 min", "2.0 h"]
