"""What the commands share: argument types, the --backend option, and the checks for missing packages.

Torch-free on purpose, like everything imported while the parser is built: ``diffprune --help``,
``sample`` and ``bench`` must work in a Python that has only the runtime (numpy, onnxruntime).
"""

import argparse
import importlib.util

from diffprune.errors import DiffPruneError
from diffprune.pruning.importance import CRITERIA, DEFAULT_METHOD
from diffprune.runtime.runners import BACKENDS, parse_backend

EPILOG = """\
pipeline:  prune -> (fine-tune) -> export -> run
examples:
  diffprune prune arch:ddpm-cifar10-32 cifar-pruned --method magnitude --target-macs 0.56
  diffprune prune ./ddpm-cifar10-32 pruned --data ./cifar_images --ratio 0.3
  diffprune prune google/ddpm-cifar10-32 pruned --data generate:64
"""

# The criteria --method allows, read from the registry itself (one home): diffprune.importance imports
# torch and torch_pruning only inside its functions, so the parser stays torch-free (tests/test_cli.py
# builds it with torch made unimportable).
CRITERIA_NAMES = tuple(CRITERIA)

# Packages of the torch side (pruning, fine-tuning, export), by import name.
TOOLCHAIN = ("torch", "diffusers", "torch_pruning")
TOOLCHAIN_INSTALL = "pip install 'diffprune[torch]'"


def fraction(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def whole_number(least: int = 1):
    """argparse type for a whole number >= ``least``: a count such as --steps 0 is an error, never "not given"."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
        return value

    parse.__name__ = "count" if least >= 1 else "whole number"  # argparse names the type in its messages
    return parse


count = whole_number(1)  # steps, images, runs, batch sizes, threads
count_or_zero = whole_number(0)  # where 0 means "none" or "off", as the option's help says


def float_list(text):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.3,0.5,0.7, got {text!r}") from None


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 (like 1,16), got {text!r}")
    return values


def scheduler_list(text):
    """argparse type for comma-separated scheduler names of the runtime."""
    from diffprune.runtime.schedulers import SCHEDULERS

    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in SCHEDULERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown scheduler {unknown[0] if unknown else text!r}; allowed: "
                                         f"{', '.join(SCHEDULERS)} (comma-separated for several)")
    return names


def backend_spec(text: str) -> str:
    """argparse type for one backend spec: auto, a name in BACKENDS, or openvino[:DEVICE][@PRECISION]."""
    if text == "auto":
        return text
    try:
        parse_backend(text)
    except DiffPruneError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def backend_list(text: str) -> list:
    specs = [backend_spec(v.strip()) for v in text.split(",") if v.strip()]
    if not specs:
        raise argparse.ArgumentTypeError(f"expected comma-separated backends like ort-cpu,openvino, got {text!r}")
    return specs


def add_backend_argument(parser, default: str | None = "auto", multiple: bool = False):
    """``--backend``, the same for every command that runs an artifact (the one place to add a backend).

    ``default=None`` leaves it unset when not given (auto applies later, after a deploy.json's backend)."""
    what = "comma-separated backends, each model measured on each" if multiple else "the runtime backend"
    return parser.add_argument(
        "--backend", default=[default] if multiple and default else default, type=backend_list if multiple else backend_spec,
        metavar="BACKEND" + (",..." if multiple else ""),
        help=f"{what}: auto (default: the fastest backend and precision installed here whose images agree with "
             "float32's, measured on the artifact once per host by a short sampling run and cached; it prints what it "
             "chose and the times), "
             f"{', '.join(BACKENDS)}; openvino[:DEVICE][@PRECISION] picks an OpenVINO device (CPU by default, GPU, "
             "NPU, AUTO) and compute precision (auto by default: OpenVINO's choice, bf16 on CPUs with bf16 units; "
             "f32 gives ONNX Runtime's images; bf16, f16)")


def add_threads_argument(parser):
    """``--threads`` of the torch commands (prune, finetune, demo): see diffprune.threads."""
    return parser.add_argument(
        "--threads", type=count, default=None,
        help="torch CPU threads, at most the cores this process may use (os.sched_getaffinity). Default: the cores "
             "other running tasks leave free, looked at again every 5 s (all of them on an idle machine, 1 beside "
             "busy jobs), so a shared CPU slows the work in proportion instead of 5x (benchmarks/shared_cpu.py). "
             "DIFFPRUNE_THREAD_POLICY=yield instead uses every core with sleeping OpenMP waits; torch-default "
             "keeps PyTorch's own count")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffPruneError(
            f"--device {name} was asked for but this torch ({torch.__version__}) sees no CUDA GPU. "
            "Use --device cpu, or install a CUDA build of torch on a machine with a GPU."
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise DiffPruneError(f"--device {name!r} is not known; allowed: auto, cpu, cuda, cuda:N.")
    return name


def missing(*modules: str) -> tuple:
    """The top-level modules among ``modules`` that cannot be imported here, found without importing them."""
    gone = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken install, or an import hook that refuses the name
            found = False
        if not found:
            gone.append(name)
    return tuple(gone)


def missing_note(*modules: str, install: str = TOOLCHAIN_INSTALL, reason: str | None = None) -> str:
    """A note for a command's help when it cannot run here, ``""`` when it can.

    `` [unavailable here: needs the toolchain, pip install 'diffprune[torch]']`` by default;
    ``reason`` replaces the text after the colon.
    """
    if not missing(*modules):
        return ""
    return f" [unavailable here: {reason or f'needs the toolchain, {install}'}]"


def require(*modules: str, install: str = TOOLCHAIN_INSTALL, why: str = "This command",
            what: str = "the torch toolchain") -> None:
    """Raise :class:`DiffPruneError` naming what is missing and how to install it, before any work."""
    gone = missing(*modules)
    if gone:
        raise DiffPruneError(
            f"{why} needs {what} ({', '.join(modules)}), and {', '.join(gone)} "
            f"{'is' if len(gone) == 1 else 'are'} not installed in this Python. Install it with: {install}."
            + (" Without it, `diffprune sample`, `bench`, `eval` and `select` still run ONNX exports and engines."
               if install == TOOLCHAIN_INSTALL else "")
        )
