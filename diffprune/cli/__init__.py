"""The ``diffprune`` command: each subcommand is a thin shell over one public Python function.

One module per command (``NAME``, ``register(subparsers)``, ``run(args) -> int``), in the order
``diffprune --help`` lists them. Building the parser imports no torch: the torch side is imported
inside ``run``, and a command whose packages are missing says so in its help and when run.
"""

import argparse
import sys

from diffprune.errors import DiffPruneError

from . import bench, build, demo, export, finetune, loadtest, profile, prune, quantize, sample, select, serve
from . import eval as eval_  # the module's name would shadow the builtin
from ._common import EPILOG

COMMANDS = (prune, profile, demo, eval_, select, finetune, export, quantize, build, sample, bench, serve, loadtest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffprune",
        description="Prune diffusers UNets with Diff-Pruning (Fang et al., NeurIPS 2023), safely saved as safetensors + JSON.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv=None) -> int:
    from diffprune.threads import prepare_environment

    prepare_environment()  # before any command imports torch: waiting OpenMP threads yield the cores
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as given, for messages that say how to run it again (finetune's --resume)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except DiffPruneError as e:
        print(f"diffprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffprune {args.command}: interrupted; no partial output was left behind.", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main"]
