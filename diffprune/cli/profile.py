"""``diffprune profile``: a shell over :func:`diffprune.latency.profile` (a latency table on a backend)."""

import argparse
import textwrap

from ._common import TOOLCHAIN, backend_spec, count, missing_note, require

NAME = "profile"
NEEDS = TOOLCHAIN


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="measure a latency table: a UNet's call time on a backend as a function of its widths"
                   + missing_note(*NEEDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Measure how one UNet call's time on BACKEND depends on the width kept in each prunable group
            (the groups `diffprune prune` removes channels from, with their couplings). A few probe models
            (dense, uniformly pruned, each resolution stage at half width, random widths) are exported and
            timed with the runtime; a per-stage cost model (ms per GMAC at each resolution, ms per million
            activations, a fixed cost) is fitted to them. `diffprune prune --target-ms / --target-speedup`
            predicts with it. The table records the host CPU, backend, precision, versions, batch,
            resolution and threads, and is cached in $DIFFPRUNE_CACHE/latency (default
            ~/.cache/diffprune/latency) under a key of model structure + backend + batch + threads + host:
            a second run, or a prune with the same settings, reads it back. Time it on a quiet machine.""")
        + missing_note(*NEEDS),
        epilog="examples:\n  diffprune profile arch:ddpm-cifar10-32 --backend ort-cpu --out cifar-ort.json\n"
               "  diffprune prune arch:ddpm-cifar10-32 pruned --method magnitude --target-speedup 2 --backend ort-cpu "
               "--latency-table cifar-ort.json",
    )
    p.add_argument("src", metavar="SRC", help="model to profile (any source `diffprune prune` takes)")
    p.add_argument("--backend", required=True, type=backend_spec,
                   help="the backend the table is for: ort-cpu, openvino[@f32|bf16|f16], ort-cuda, ort-trt (no auto: "
                        "a table belongs to one backend and precision)")
    p.add_argument("--batch", type=count, default=1, help="UNet batch the table is measured at (default 1)")
    p.add_argument("--threads", type=count, default=None, help="CPU threads of the backend (default: its own)")
    p.add_argument("--out", default=None, metavar="TABLE.json", help="also write the table here (it is cached anyway)")
    p.add_argument("--no-cache", action="store_true", help="measure again even if a cached table exists")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    require(*NEEDS)
    from diffprune.latency import profile

    if args.backend == "auto":
        from diffprune.errors import DiffPruneError

        raise DiffPruneError("A latency table belongs to one backend and precision; give it explicitly, e.g. "
                             "--backend ort-cpu or --backend openvino@f32, not auto.")
    table = profile(args.src, args.backend, batch=args.batch, threads=args.threads, out=args.out,
                    use_cache=not args.no_cache, overwrite=args.overwrite, progress=not args.quiet)
    fit = table["fit"]
    where = f"cached {table['cached']}" if table.get("cached") else f"measured in {table['seconds']:.0f} s"
    print(f"latency table {table['key']} ({where}): {table['backend']} ({table.get('precision')}), batch {table['batch']}, "
          f"host {table['host']['cpu']}; dense {table['dense_ms']:.2f} ms; fit to {len(table['probes'])} probes: "
          f"median error {fit['median_abs']:.1%}, max {fit['max_abs']:.1%}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
