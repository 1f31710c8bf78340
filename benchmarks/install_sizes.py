"""Installed size of each documented install: a fresh virtualenv per install, measured with du.

    python benchmarks/install_sizes.py            # about 3 minutes; needs the package registry

Builds the wheel from this checkout (no build isolation), installs it as the README says into
fresh virtualenvs, checks what each can import, and writes benchmarks/results/install_sizes.{json,md}.
The full toolchain is measured with the CPU build of torch (pip install torch==2.13.0 first, as
.ci/run does); a CUDA build of torch adds several GB.
"""

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INSTALLS = {  # name -> (pip install arguments, run in order; the README's command)
    "inference host, ONNX Runtime": ([["{wheel}[cpu]"]], 'pip install "diffprune[cpu]"'),
    "inference host, OpenVINO": ([["{wheel}[openvino]"]], 'pip install "diffprune[openvino]"'),
    "toolchain (CPU torch)": ([["torch==2.13.0"], ["{wheel}[torch,cpu,openvino,int8]"]],
                              'pip install torch==2.13.0 && pip install "diffprune[torch,cpu,openvino,int8]"'),
}
PROBE = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
         "('torch', 'diffusers', 'onnxruntime', 'openvino', 'diffprune.runtime')}))")


def du_mib(path: Path) -> float:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]) / 1024


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="diffprune-install-sizes-"))
    try:
        source = work / "source"
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                                     "__pycache__", "benchmarks", "tests"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(work), str(source)], check=True)
        (wheel,) = work.glob("diffprune-*.whl")
        empty = work / "empty"
        venv.create(empty, with_pip=True)
        rows = [{"install": "empty virtualenv (python + pip)", "command": "python -m venv", "mib": du_mib(empty)}]
        for name, (steps, command) in INSTALLS.items():
            env_dir = work / name.replace(" ", "-").replace("(", "").replace(")", "")
            venv.create(env_dir, with_pip=True)
            for args in steps:
                subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
                                *[a.format(wheel=wheel) for a in args]], check=True, cwd=work)
            probe = subprocess.run([str(env_dir / "bin" / "python"), "-c", PROBE], capture_output=True, text=True,
                                   check=True, cwd=work)
            rows.append({"install": name, "command": command, "mib": du_mib(env_dir), "imports": json.loads(probe.stdout)})
            print(f"{name}: {rows[-1]['mib']:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"command": "python benchmarks/install_sizes.py", "python": platform.python_version(),
              "platform": platform.platform(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "install_sizes.json").write_text(json.dumps(record, indent=1))
    lines = ["# Installed size of each install (du of a fresh virtualenv)", "",
             f"Command: `{record['command']}`; Python {record['python']}, {record['platform']}.", "",
             "| install | command | MiB | torch | onnxruntime | openvino |", "|---|---|---|---|---|---|"]
    for r in rows:
        i = r.get("imports", {})
        yes = lambda m: ("yes" if i.get(m) else "no") if i else "-"  # noqa: E731
        lines.append(f"| {r['install']} | `{r['command']}` | {r['mib']:.0f} | {yes('torch')} | {yes('onnxruntime')} | "
                     f"{yes('openvino')} |")
    (RESULTS / "install_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
