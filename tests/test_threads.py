"""``--threads`` and the thread policies (diffprune/threads.py): the option's checks, the environment the
command sets before torch loads, and the threads recorded in what prune and fine-tune write."""

import json
import os
import subprocess
import sys

import pytest
import torch

from diffprune import DiffPruneError
from diffprune.threads import POLICY_ENV, apply_thread_policy, check_threads, prepare_environment, usable_cpus


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2", usable_cpus() + 1])
def test_threads_outside_1_to_the_usable_cores_are_refused(bad):
    with pytest.raises(DiffPruneError, match=f"threads {bad!r} is not allowed: give a whole number from 1 to {usable_cpus()}"):
        check_threads(bad)


def test_threads_in_range_or_none_pass():
    assert check_threads(None) is None and check_threads(1) == 1 and check_threads(usable_cpus()) == usable_cpus()


def test_the_yield_policy_makes_waiting_threads_sleep_unless_told_otherwise():
    env = {POLICY_ENV: "yield"}
    prepare_environment(env)
    assert env == {POLICY_ENV: "yield", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {POLICY_ENV: "yield", "OMP_WAIT_POLICY": "ACTIVE"}  # the user's own choice stays
    prepare_environment(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    for env in ({}, {POLICY_ENV: "share"}, {POLICY_ENV: "torch-default"}):  # share, the default, changes threads only
        prepare_environment(env)
        assert "OMP_WAIT_POLICY" not in env


def test_apply_sets_torch_threads_and_records_them(keep_torch_threads, monkeypatch):
    from diffprune import threads

    monkeypatch.delenv(POLICY_ENV, raising=False)
    record = apply_thread_policy(1)
    assert torch.get_num_threads() == 1 and record["threads"] == 1 and record["policy"] == "share"  # the default
    monkeypatch.setattr(threads, "others_running", lambda: 0.0)  # an idle machine: every usable core
    assert apply_thread_policy(None)["threads"] == usable_cpus()
    monkeypatch.setenv(POLICY_ENV, "torch-default")
    torch.set_num_threads(1)
    record = apply_thread_policy(None)  # torch-default leaves PyTorch's count alone
    assert record["threads"] == 1 and record["policy"] == "torch-default"
    monkeypatch.setenv(POLICY_ENV, "yield")
    assert apply_thread_policy(None)["threads"] == usable_cpus()  # yield: every usable core
    monkeypatch.setenv(POLICY_ENV, "spin")
    with pytest.raises(DiffPruneError, match="DIFFPRUNE_THREAD_POLICY='spin' is unknown; allowed: share, yield, torch-default"):
        apply_thread_policy(None)


def test_cli_refuses_bad_threads_before_any_work(tmp_path, capsys):
    from diffprune.cli import main

    out = tmp_path / "pruned"
    with pytest.raises(SystemExit) as e:
        main(["prune", "arch:tiny", str(out), "--method", "magnitude", "--threads", "0"])
    assert e.value.code == 2 and "argument --threads: expected a whole number >= 1, got '0'" in capsys.readouterr().err
    too_many = str(usable_cpus() + 1)
    for argv in (["prune", "arch:tiny", str(out), "--method", "magnitude"], ["finetune", "arch:tiny", str(out)]):
        assert main(argv + ["--threads", too_many]) == 2
        assert f"threads {too_many} is not allowed" in capsys.readouterr().err
    assert not out.exists()


def test_prune_command_applies_the_policy_and_records_it(tmp_path):
    """In a fresh process, as a user runs it: the wait policy is set before torch loads and recorded."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", POLICY_ENV)}
    env[POLICY_ENV] = "yield"
    out = tmp_path / "pruned"
    proc = subprocess.run([sys.executable, "-m", "diffprune", "prune", "arch:tiny", str(out), "--method", "magnitude",
                           "--ratio", "0.5", "--threads", "1", "--quiet"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pruning = json.loads((out / "pruning.json").read_text())["pruning"]
    assert pruning["threads"] == 1
    assert pruning["thread_policy"]["omp_wait_policy"] == "PASSIVE" and pruning["thread_policy"]["policy"] == "yield"


def test_finetune_records_its_threads_and_checks_them(tmp_path, keep_torch_threads):
    import diffprune
    from diffprune.sources.unet import build_unet
    from diffprune.training.finetune import finetune

    src = diffprune.save(build_unet("tiny"), tmp_path / "tiny")
    with pytest.raises(DiffPruneError, match="threads 0 is not allowed"):
        finetune(src, tmp_path / "never", steps=1, threads=0)
    finetune(src, tmp_path / "ft", steps=1, threads=1, data="builtin:digits", batch_size=2, num_images=8,
             warmup_steps=0, progress=False, device="cpu")
    record = json.loads((tmp_path / "ft" / "pruning.json").read_text())["finetune"]
    assert record["threads"] == 1 and record["thread_policy"]["threads"] == 1
    assert not (tmp_path / "never").exists()


def test_share_takes_the_cores_other_tasks_leave_free(monkeypatch):
    from diffprune import threads

    cores = usable_cpus()
    for others, wanted in ((0.0, cores), (cores - 1.0, 1), (cores + 3.0, 1), (None, cores)):
        monkeypatch.setattr(threads, "others_running", lambda others=others: others)
        assert threads.share_threads() == wanted


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc")
def test_others_running_counts_a_busy_process_and_not_this_one():
    from diffprune import threads

    assert threads.others_running() >= 0
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"])
    try:
        seen = max(threads.others_running(samples=5) for _ in range(5))
    finally:
        busy.terminate()
        busy.wait()
    assert seen >= 1 * usable_cpus() / os.cpu_count()  # the busy loop, on this process's share of the machine


def test_share_policy_follows_the_load_at_most_every_few_seconds(keep_torch_threads, monkeypatch):
    from diffprune import threads

    monkeypatch.setenv(POLICY_ENV, "share")
    load = {"others": 0.0}
    monkeypatch.setattr(threads, "others_running", lambda: load["others"])
    clock = {"now": 100.0}
    monkeypatch.setattr("time.monotonic", lambda: clock["now"])
    record = apply_thread_policy(None)
    assert record["policy"] == "share" and record["threads"] == usable_cpus() == torch.get_num_threads()
    load["others"] = 8.0  # the machine fills up
    threads.tick()
    assert torch.get_num_threads() == usable_cpus()  # not looked at again before SHARE_EVERY_S
    clock["now"] += threads.SHARE_EVERY_S
    threads.tick()
    assert torch.get_num_threads() == 1
    load["others"] = 0.0  # and empties
    clock["now"] += threads.SHARE_EVERY_S
    threads.tick()
    assert torch.get_num_threads() == usable_cpus()
    apply_thread_policy(1)  # threads given: the policy leaves them alone
    clock["now"] += threads.SHARE_EVERY_S
    threads.tick()
    assert torch.get_num_threads() == 1
