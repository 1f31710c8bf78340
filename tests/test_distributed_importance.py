"""Importance estimation on two CPU processes (gloo, started by torchrun as accelerate launch would): the same
timesteps, gradients and kept channels as one process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

import diffprune
from diffprune.pruning._distributed import share
from diffprune.pruning.importance import Calibration
from diffprune.pruning.importance._gradients import accumulate_gradients
from diffprune.sources.architectures import DEFAULT_SCHEDULER

from test_importance import Identity, _expected


def _torchrun(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_shares_cover_every_row_once():
    for n in (2, 5, 8, 9):
        rows = [share(n, r, 3) for r in range(3)] if n >= 3 else [share(n, r, 2) for r in range(2)]
        assert rows[0][0] == 0 and rows[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        sizes = [hi - lo for lo, hi in rows]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


# Half the images dark (zeros), half bright: each rank's own loss curve crosses thr at another t than the
# global one, so only a stop rule fed the summed loss can agree with one process.
IMAGES = "torch.cat([torch.zeros(3, 1, 4, 4), torch.full((3, 1, 4, 4), 0.9)])"
SCRIPT = """
import json, sys, types
import torch, torch.distributed as dist
import torch.nn as nn
from diffprune.pruning.importance import Calibration
from diffprune.pruning.importance._gradients import accumulate_gradients
from diffprune.sources.architectures import DEFAULT_SCHEDULER

class Identity(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
    def forward(self, x, t):
        return types.SimpleNamespace(sample=self.w * x)

dist.init_process_group("gloo")
images = {images}
calib = Calibration(images=images, scheduler_config=DEFAULT_SCHEDULER, micro_batch=2, seed=0, progress=False)
model = Identity()
log = accumulate_gradients(model, calib, thr=0.5)
with open(sys.argv[1] + f".{{dist.get_rank()}}.json", "w") as f:
    json.dump({{"timesteps": log.timesteps, "losses": log.losses, "stopped": log.stopped_by_threshold,
               "grad": model.w.grad.item()}}, f)
dist.destroy_process_group()
"""


def test_two_processes_stop_at_the_timestep_of_one(tmp_path):
    images = eval(IMAGES)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    used, _ = _expected(images, noise, 0.5)
    # Each half alone would stop elsewhere: the test can tell a local stop rule from the global one.
    assert _expected(images[:3], noise[:3], 0.5)[0] != used or _expected(images[3:], noise[3:], 0.5)[0] != used

    one = Identity()
    log = accumulate_gradients(one, Calibration(images=images, scheduler_config=DEFAULT_SCHEDULER, micro_batch=2,
                                                seed=0, progress=False), thr=0.5)
    assert log.timesteps == used and log.stopped_by_threshold

    script = tmp_path / "importance.py"
    script.write_text(textwrap.dedent(SCRIPT.format(images=IMAGES)))
    _torchrun(script, tmp_path / "out")
    ranks = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # both ranks decided the same and hold the same summed gradient
    assert ranks[0]["timesteps"] == used and ranks[0]["stopped"]
    np.testing.assert_allclose(ranks[0]["losses"], log.losses, rtol=1e-6)
    np.testing.assert_allclose(ranks[0]["grad"], one.w.grad.item(), rtol=1e-5)


def test_prune_on_two_processes_keeps_the_channels_of_one(tmp_path):
    from diffprune.sources.unet import build_unet

    options = dict(method="diff-pruning", ratio=0.5, data="builtin:digits", num_images=6, micro_batch=2,
                   max_timesteps=3, seed=0)
    single, report = diffprune.prune(build_unet("tiny"), progress=False, **options)

    out = tmp_path / "pruned"
    proc = _torchrun("-m", "diffprune", "prune", "arch:tiny", out, "--method", "diff-pruning", "--ratio", "0.5", "--data", "builtin:digits",
                     "--num-images", "6", "--micro-batch", "2", "--max-timesteps", "3", "--device", "cpu", "--quiet")
    assert proc.stdout.count("saved ") == 1  # one process writes and prints
    info = json.loads((out / "pruning.json").read_text())["pruning"]
    assert info["processes"] == 2 and report.processes == 1
    assert info["timesteps_used"] == report.timesteps_used == [0, 1, 2]
    np.testing.assert_allclose(info["losses"], report.losses, rtol=1e-5)
    shared = diffprune.load(out).state_dict()
    expected = single.state_dict()
    assert shared.keys() == expected.keys()
    for key in expected:  # kept channels are copies of the dense weights: the same channels give equal tensors
        assert torch.equal(shared[key], expected[key]), key
