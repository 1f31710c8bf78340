"""The layout holds: every module imports on its own, no two modules import each other (directly or round a
circle, lazy imports inside functions included), and the export package loads none of the orchestration."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the package it installs as (pyproject.toml's package-dir).
FOLDERS = {"diffprune": "diffprune", "export": "diffprune.export", "runtime": "diffprune.runtime"}


def modules() -> dict:
    """Module name -> source file, for every module of the three folders."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set) -> set:
    """The project modules ``name`` imports anywhere in its file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from pkg import module` is an arrow to the module
                sub = f"{module}.{alias.name}"
                targets.add(sub if sub in known else module)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return {t for t in targets if t in known and t != name}


def test_no_import_circles():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    # A package's __init__ re-exporting its own modules is not a circle with them: only arrows between modules
    # (and from a module to another package) count.
    for name in graph:
        if found[name].name == "__init__.py":
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_every_module_imports_on_its_own():
    # One interpreter; between modules every project module is dropped from sys.modules, so each import starts
    # from nothing of ours (third-party packages stay loaded, which keeps this fast).
    names = sorted(n for n in modules() if not n.endswith("__main__"))
    code = (
        "import importlib, sys\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for n in names:\n"
        "    for m in [m for m in sys.modules if m == 'diffprune' or m.startswith('diffprune.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{n}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_export_loads_no_orchestration():
    """diffprune.export (the deployment side) may use sources and the runtime, never pruning, training,
    evaluation, selection, the demo or the CLI."""
    code = (
        "import sys, diffprune.export\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('diffprune.pruning', 'diffprune.training', "
        "'diffprune.evaluation', 'diffprune.selection', 'diffprune.demo', 'diffprune.cli'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"diffprune.export loaded: {proc.stdout.split()}"
