import json
import subprocess
import sys

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
        ["prune", "arch:tiny", str(tmp_path / "d")],  # diff-pruning without --data
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
