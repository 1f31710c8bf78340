import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from diffprune.cli import main


def test_prune_writes_a_model_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["prune", "arch:tiny-attn", str(out), "--method", "diff-pruning", "--data", "builtin:digits",
                 "--num-images", "4", "--max-timesteps", "2", "--ratio", "0.3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "params" in printed and "MACs" in printed and "2 timesteps" in printed
    info = json.loads((out / "pruning.json").read_text())
    assert info["pruning"]["timesteps_used"] == [0, 1]
    assert info["source"]["source"] == "arch:tiny-attn"


def test_user_errors_exit_non_zero_without_traceback(tmp_path):
    cases = [
        ["prune", "arch:tiny", str(tmp_path / "a"), "--ratio", "1.5"],
        ["prune", "arch:nope", str(tmp_path / "b"), "--method", "magnitude"],
        ["prune", str(tmp_path / "missing"), str(tmp_path / "c"), "--method", "magnitude"],
        ["prune", "arch:tiny", str(tmp_path / "d"), "--method", "diff-pruning"],  # without --data
        ["prune", "arch:tiny", str(tmp_path / "no" / "such" / "e"), "--method", "magnitude"],
    ]
    for argv in cases:
        proc = subprocess.run([sys.executable, "-m", "diffprune", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_existing_output_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", "arch:tiny", str(out), "--method", "magnitude", "--quiet"]) == 2
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["prune", "arch:tiny", str(out), "--method", "magnitude", "--quiet", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "pruning.json").exists()


def test_help_teaches():
    proc = subprocess.run([sys.executable, "-m", "diffprune", "prune", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("--thr", "--target-macs", "generate:N", "arch:NAME", "--round-to"):
        assert word in proc.stdout


COMMAND_NAMES = ["prune", "profile", "demo", "eval", "select", "finetune", "export", "quantize", "build", "sample", "bench", "serve",
                 "loadtest"]

# Makes torch, diffusers and torch_pruning unimportable (as in test_runtime.py), then runs the CLI.
NO_TORCH = textwrap.dedent("""
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "torch_pruning"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, NoTorch())
    from diffprune.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:  # --help
        code = e.code
    assert not any(m.split(".")[0] in ("torch", "diffusers", "torch_pruning") for m in sys.modules)
    sys.exit(code)
""")


def _run_without_torch(*argv):
    env = {**os.environ, "COLUMNS": "200"}  # one line per command in --help
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, env=env)


def test_help_and_the_runtime_commands_work_without_torch():
    top = _run_without_torch("--help")
    assert top.returncode == 0, top.stderr
    listed = dict(re.findall(r"^    (\w+)\s+(.*)$", top.stdout, flags=re.M))
    assert list(listed) == COMMAND_NAMES
    for name in ("prune", "profile", "demo", "finetune", "export", "build"):
        assert "[unavailable here: needs the toolchain" in listed[name], (name, top.stdout)
    for name in ("sample", "bench", "eval", "select", "quantize"):  # quantize needs openvino and nncf only
        assert "unavailable" not in listed[name], (name, top.stdout)
    for command in ("sample", "bench", "prune"):
        proc = _run_without_torch(command, "--help")
        assert proc.returncode == 0 and "usage: diffprune " + command in proc.stdout, proc.stderr


def test_sample_runs_an_export_without_torch(tiny_export, tmp_path):
    out = tmp_path / "grid.png"
    proc = _run_without_torch("sample", str(tiny_export), "--n", "2", "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_a_torch_command_without_torch_says_what_to_install(tmp_path):
    out = tmp_path / "out"
    proc = _run_without_torch("prune", "arch:tiny", str(out), "--method", "magnitude")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffprune prune: error: "), proc.stderr
    assert "diffprune[torch]" in lines[0] and "torch_pruning" in lines[0]  # what is missing, how to get it
    assert not out.exists()


def test_every_command_module_is_a_name_a_register_and_a_run(capsys):
    from diffprune.cli import COMMANDS, build_parser

    assert [m.NAME for m in COMMANDS] == COMMAND_NAMES
    for module in COMMANDS:
        assert module.__name__ == f"diffprune.cli.{module.NAME}"
        assert callable(module.register) and callable(module.run)
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    assert re.findall(r"^    (\w+)\s", capsys.readouterr().out, flags=re.M) == COMMAND_NAMES
    fewest = {"prune": ["a", "b"], "profile": ["a", "--backend", "ort-cpu"], "demo": [], "eval": ["m"], "select": ["d", "--budget-ms", "1"],
              "finetune": ["a", "b"], "export": ["a", "b"], "build": ["d"], "sample": ["a"], "bench": ["a"],
              "serve": ["t"], "loadtest": ["http://127.0.0.1:8000", "--out", "o"]}
    for name, rest in fewest.items():
        assert parser.parse_args([name, *rest]).func.__module__ == f"diffprune.cli.{name}"


def test_criterion_names_match_the_registry():
    from diffprune.cli._common import CRITERIA_NAMES
    from diffprune.pruning.importance import CRITERIA

    assert CRITERIA_NAMES == tuple(CRITERIA)


def test_a_missing_package_is_noted_without_importing_it():
    from diffprune.cli._common import missing, missing_note

    assert missing("json", "no_such_package_xyz") == ("no_such_package_xyz",)
    assert missing_note("json") == ""
    assert missing_note("no_such_package_xyz") == " [unavailable here: needs the toolchain, pip install 'diffprune[torch]']"


@pytest.mark.parametrize("argv", [
    ["sample", "export", "--steps", "0"], ["sample", "export", "--n", "0"], ["sample", "export", "--batch", "0"],
    ["bench", "export", "--steps", "0"], ["bench", "export", "--runs", "0"], ["eval", "m", "--n", "0"],
    ["finetune", "a", "b", "--steps", "0"], ["prune", "a", "b", "--num-images", "0"], ["demo", "--steps", "0"],
    ["select", "d", "--budget-ms", "1", "--n", "0"], ["export", "a", "b", "--max-batch", "0"],
    ["quantize", "a", "b", "--steps", "0"], ["sample", "export", "--steps", "-1"], ["sample", "export", "--n", "two"],
])
def test_a_zero_count_is_an_error_not_the_default(argv, capsys):
    # `--steps 0` used to be read as "not given" (`args.steps or 50`) and ran 50 steps.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    flag = argv[-2]
    assert f"argument {flag}: expected a whole number >= 1, got '{argv[-1]}'" in err, err


def test_sample_runs_the_counts_given(tiny_export, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(tiny_export), "--n", "1", "--steps", "1", "--out", str(out)]) == 0
    assert "wrote " + str(out) + ": 1 images, 1 ddim steps" in capsys.readouterr().out


def test_every_option_of_every_command_has_a_help_text():
    import argparse

    from diffprune.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    silent = [f"{name} {action.option_strings[0] if action.option_strings else action.metavar or action.dest}"
              for name, sub in commands.choices.items() for action in sub._actions
              if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not silent, f"options without a description: {silent}"


def test_prune_help_names_every_shipped_model_and_architecture():
    from diffprune.sources.architectures import ARCHITECTURES, BUILTIN_MODELS

    proc = subprocess.run([sys.executable, "-m", "diffprune", "prune", "--help"], capture_output=True, text=True)
    text = " ".join(proc.stdout.split())  # across line breaks
    for name in (*BUILTIN_MODELS, *ARCHITECTURES):
        assert re.search(rf"[ (:]{re.escape(name)}[,)]", text), name


def test_build_prints_a_single_exports_profile_and_checks_its_batch(tiny_export, capsys):
    from diffprune.cli import main
    from diffprune.export import engine_profiles

    assert main(["build", str(tiny_export), "--print-profiles"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["model.sample: min [1, 1, 16, 16] opt [2, 1, 16, 16] max [4, 1, 16, 16]",
                       "model.timestep: min [1] opt [2] max [4]"]  # the exported range, (B, C, H, W) and (B,)
    assert engine_profiles(tiny_export, (1, 1, 2))["model"]["timestep"] == ((1,), (1,), (2,))
    # the profile build_engine would refuse is refused here too, not printed
    assert main(["build", str(tiny_export), "--print-profiles", "--batch", "1", "2", "16"]) == 2
    assert "outside the exported range" in capsys.readouterr().err
