import inspect
import math

import pytest
import torch
import torch.nn as nn
from diffusers.models.attention_processor import Attention

import diffprune
from diffprune import DiffPruneError
from diffprune.sources.structure import keep_count


def _forward(model, x, t):
    with torch.no_grad():
        return model(x, t).sample


def test_ratio_zero_is_identity(tiny_attn, inputs):
    pruned, report = diffprune.prune(tiny_attn, method="magnitude", ratio=0.0, progress=False)
    x, t = inputs(tiny_attn)
    assert torch.equal(_forward(pruned, x, t), _forward(tiny_attn, x, t))
    assert report.params_after == report.params_before and report.macs_after == report.macs_before


@pytest.mark.parametrize("arch", ["tiny", "tiny-attn"])
def test_widths_are_multiples_of_round_to_and_groups_stay_equal(arch, request):
    model = request.getfixturevalue(arch.replace("-", "_"))
    pruned, report = diffprune.prune(model, method="magnitude", ratio=0.5, round_to=8, progress=False)
    changed = [(n, a, b) for n, (a, b) in report.layer_widths.items() if a != b]
    assert changed, "ratio 0.5 pruned nothing"
    for name, _, after in changed:
        assert after % 8 == 0, (name, after)
    for m in pruned.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
    assert pruned.conv_out.out_channels == model.conv_out.out_channels  # image channels untouched
    assert pruned.conv_in.in_channels == model.conv_in.in_channels
    assert report.macs_after < 0.4 * report.macs_before  # ~half the channels -> ~a quarter of the MACs


def test_keep_count_rounds_to_nearest_step():
    assert keep_count(128, 32, 0.3, 8) == 3  # 4 per group * 0.7 = 2.8 -> 3 (width 96, as the paper's 3.4G model)
    assert keep_count(256, 32, 0.3, 8) == 6  # 8 * 0.7 = 5.6 -> 6 (width 192)
    assert keep_count(64, 1, 0.5, 8) == 32
    assert keep_count(64, 4, 0.5, 8) == 8  # step 2 per group keeps 4 * 8 = 32 a multiple of 8
    assert keep_count(179, 1, 0.0, 8) == 179  # ratio 0 never trims an unaligned width
    assert keep_count(64, 1, 0.99, 8) == 8  # never below one step


def test_forward_and_training_step_after_pruning(tiny_attn, inputs):
    pruned, _ = diffprune.prune(tiny_attn, method="random", ratio=0.4, progress=False)
    pruned.train()
    x, t = inputs(tiny_attn)
    opt = torch.optim.AdamW(pruned.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in pruned.parameters()]
    loss = nn.functional.mse_loss(pruned(x, t).sample, torch.randn_like(x))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, pruned.parameters()))


@pytest.mark.parametrize("method", ["diff-pruning", "taylor", "magnitude", "random", "reinit"])
def test_every_method_prunes_to_a_working_model(method, tiny, inputs):
    pruned, report = diffprune.prune(tiny, method=method, ratio=0.5, data="builtin:digits", num_images=4,
                                     max_timesteps=3, progress=False)
    x, t = inputs(tiny)
    out = _forward(pruned, x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert report.method == method
    assert report.params_after < report.params_before
    if method in ("diff-pruning", "taylor"):
        assert report.timesteps_used == [0, 1, 2]
        assert len(report.losses) == 3


def test_reinit_keeps_random_structure_with_fresh_weights(tiny):
    a, ra = diffprune.prune(tiny, method="random", ratio=0.5, seed=3, progress=False)
    b, rb = diffprune.prune(tiny, method="reinit", ratio=0.5, seed=3, progress=False)
    assert ra.layer_widths == rb.layer_widths
    assert not torch.equal(a.conv_in.weight, b.conv_in.weight)


def test_same_seed_same_model(tiny):
    a, _ = diffprune.prune(tiny, method="random", ratio=0.5, seed=1, progress=False)
    b, _ = diffprune.prune(tiny, method="random", ratio=0.5, seed=1, progress=False)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_input_model_is_not_modified(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    diffprune.prune(tiny, method="diff-pruning", ratio=0.5, data="builtin:digits", num_images=2, max_timesteps=1, progress=False)
    after = tiny.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny.parameters())


def test_target_macs_is_met_and_close(tiny_attn):
    pruned, report = diffprune.prune(tiny_attn, method="magnitude", target_macs=0.5, progress=False)
    kept = report.macs_after / report.macs_before
    assert kept <= 0.5
    assert kept > 0.35  # widths move in steps, but the search should not overshoot wildly
    assert 0 < report.ratio < 0.95


def _attentions(model):
    return [m for m in model.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("target, prune_heads", [(0.5, False), (0.3, True), (1.0, False)])
def test_target_macs_search_builds_only_new_widths(tiny_attn, target, prune_heads):
    """The MAC search skips midpoints that keep what an evaluated ratio kept: the same ratio, model and MACs as
    the plain bisection, from fewer builds."""
    from diffprune.pruning.importance import CRITERIA
    from diffprune.pruning.pruner import _Planner, _search_ratio
    from diffprune.sources.unet import count_macs_params

    planner = _Planner(tiny_attn.eval(), CRITERIA["magnitude"](thr=0.05), 8, prune_heads=prune_heads)
    budget = target * count_macs_params(tiny_attn)[0]
    built = []
    apply = planner.apply
    planner.apply = lambda ratio, keep=None: built.append(ratio) or apply(ratio, keep)
    ratio, model, macs = _search_ratio(planner, budget)

    lo, hi = 0.0, 0.95  # the plain bisection: every midpoint built and counted
    plain = []
    for _ in range(12):
        mid = (lo + hi) / 2
        plain.append(mid)
        if count_macs_params(apply(mid))[0] <= budget:
            hi = mid
        else:
            lo = mid
    assert ratio == hi and macs == count_macs_params(apply(hi))[0] <= budget
    assert planner.kept_at(ratio) == planner.kept_at(hi)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in apply(hi).named_parameters()]
    assert all(a.shape == b.shape for a, b in zip(model.parameters(), apply(hi).parameters()))
    assert len(built) < 1 + len(plain)


def test_attention_heads_shrink_equally(tiny_attn, inputs):
    dense_heads = [a.heads for a in _attentions(tiny_attn)]
    assert max(dense_heads) > 1, "fixture should have multi-head attention"
    pruned, _ = diffprune.prune(tiny_attn, method="magnitude", ratio=0.5, progress=False)
    for attn, heads in zip(_attentions(pruned), dense_heads):
        assert attn.heads == heads
        assert attn.to_q.out_features == attn.to_k.out_features == attn.to_v.out_features == attn.to_out[0].in_features
        assert attn.inner_dim == attn.to_q.out_features
        dim_head = attn.inner_dim // attn.heads
        assert dim_head * attn.heads == attn.inner_dim and dim_head < 16
        assert math.isclose(attn.scale, dim_head ** -0.5)
    x, t = inputs(tiny_attn)
    assert torch.isfinite(_forward(pruned, x, t)).all()


def test_removing_a_dead_head_keeps_the_output_exactly(tiny_attn, inputs):
    # Zero one head's q/k/v rows and to_out columns: it then contributes nothing, so removing
    # whole heads (which keeps dim_head, hence the attention scale) must not change that module's
    # output. (The other attention modules lose a live head, so the whole UNet does change.)
    import copy

    model = copy.deepcopy(tiny_attn)
    attn = _attentions(model)[0]
    dim_head = attn.inner_dim // attn.heads
    dead = slice(dim_head, 2 * dim_head)  # head 1
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v):
            lin.weight[dead] = 0
            lin.bias[dead] = 0 if lin.bias is not None else None
        attn.to_out[0].weight[:, dead] = 0
    heads = attn.heads
    # round_to larger than any width: nothing but whole heads can be removed.
    only_heads, _ = diffprune.prune(model, method="magnitude", ratio=1 / heads, prune_heads=True,
                                    round_to=10**6, progress=False)
    pruned_attn = _attentions(only_heads)[0]
    assert pruned_attn.heads == heads - 1 and pruned_attn.inner_dim == (heads - 1) * dim_head
    assert pruned_attn.query_dim == attn.query_dim
    hidden = torch.randn(2, attn.query_dim, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(pruned_attn(hidden), attn(hidden), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(method="nope"), "Unknown method"),
    (dict(ratio=1.0), "ratio 1.0 is out of range"),
    (dict(ratio=0.5, target_macs=0.5), "Both ratio"),
    (dict(target_macs=0.0), "target_macs 0.0 is out of range"),
    (dict(thr=1.5), "thr 1.5"),
    (dict(round_to=0), "round_to 0"),
    (dict(method="diff-pruning", data=None), "needs calibration images"),
    (dict(micro_batch=0, method="magnitude"), "micro_batch 0"),
])
def test_bad_options_are_refused(tiny, kwargs, fragment):
    kwargs.setdefault("method", "magnitude")
    with pytest.raises(DiffPruneError, match=fragment):
        diffprune.prune(tiny, progress=False, **kwargs)


def test_guidance_of_generated_calibration_data_is_a_flag_and_is_recorded(tmp_path, monkeypatch, capsys):
    # generate:N with --prompts drew at 7.5 with no way to change it; builtin:digits-text wants 1.5.
    import json

    import diffprune.data.generate
    from diffprune.cli import main

    scales = []
    real = diffprune.data.generate.generate

    def recorded(*args, **kwargs):
        scales.append(kwargs.get("guidance_scale"))
        return real(*args, **{**kwargs, "steps": 2})  # the scale is what is tested, not the samples

    monkeypatch.setattr(diffprune.data.generate, "generate", recorded)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\n")
    base = ["prune", "arch:tiny-sd", None, "--method", "diff-pruning", "--data", "generate:2", "--prompts", str(prompts), "--num-images", "2",
            "--max-timesteps", "1", "--ratio", "0.3", "--round-to", "1", "--quiet"]
    out = tmp_path / "p15"
    assert main([*base[:2], str(out), *base[3:], "--guidance-scale", "1.5"]) == 0
    assert scales == [1.5]
    assert json.loads((out / "unet" / "pruning.json").read_text())["pruning"]["guidance_scale"] == 1.5
    assert "images drawn with guidance 1.5" in (out / "unet" / "pruning.json").read_text()
    out = tmp_path / "default"
    assert main([*base[:2], str(out), *base[3:]]) == 0
    assert scales[-1] == 7.5 and json.loads((out / "unet" / "pruning.json").read_text())["pruning"]["guidance_scale"] == 7.5
    capsys.readouterr()
    # A scale with nothing drawn under guidance would be silently ignored: an error instead, before any work.
    assert main(["prune", "arch:tiny", str(tmp_path / "x"), "--data", "builtin:digits", "--guidance-scale", "1.5"]) == 2
    assert "--guidance-scale 1.5 applies to samples drawn with prompts" in capsys.readouterr().err
    assert main([*base[:2], str(tmp_path / "y"), *base[3:], "--guidance-scale", "0.5"]) == 2
    assert "guidance_scale 0.5 is invalid" in capsys.readouterr().err


def test_the_default_criterion_is_magnitude_and_says_when_calibration_options_go_unused(tmp_path, capsys):
    """The study (benchmarks/criteria.py) made magnitude the default; a user who passes Diff-Pruning's options
    without --method is told they were not used, and how to use them."""
    import json

    from diffprune.cli import main
    from diffprune.pruning.importance import DEFAULT_METHOD

    assert DEFAULT_METHOD == "magnitude" and inspect.signature(diffprune.prune).parameters["method"].default == "magnitude"
    out = tmp_path / "p"
    assert main(["prune", "arch:tiny", str(out), "--data", "builtin:digits", "--max-timesteps", "2", "--ratio", "0.3",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert ("note: magnitude ranks channels by their weights and reads no calibration data, so --data, "
            "--max-timesteps are not used; for Diff-Pruning's gradients add --method diff-pruning.") in err
    assert json.loads((out / "pruning.json").read_text())["pruning"]["method"] == "magnitude"
    assert main(["prune", "arch:tiny", str(tmp_path / "q"), "--ratio", "0.3", "--quiet"]) == 0
    assert "note:" not in capsys.readouterr().err  # nothing unused, nothing said
