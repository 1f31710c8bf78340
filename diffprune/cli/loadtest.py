"""``diffprune loadtest``: a shell over :func:`diffprune.serve.loadtest.loadtest`."""

import argparse
import json
import os

from diffprune.errors import DiffPruneError

from ._common import int_list

NAME = "loadtest"


def rate_list(text):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates like 0.5,1,2, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected requests per second > 0 (like 0.5,1,2), got {text!r}")
    return values


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="load-test a running `diffprune serve` (closed and open loop) and write a report",
        description="Closed loop (each of --concurrency clients waits for its answer) and open loop (Poisson "
                    "arrivals at each --rate), each level bounded by --duration and --max-requests, against a server "
                    "on this machine only. Writes OUT/loadtest.json (every request), loadtest.md (p50/p95/p99, "
                    "throughput, errors by kind) and loadtest.png (latency against throughput).",
        epilog="example:\n  diffprune loadtest http://127.0.0.1:8000 --prompt \"a handwritten digit seven\" "
               "--steps 10 --concurrency 1,2,4,8 --rate 1,2 --duration 20 --out load-dense",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", metavar="URL", help="the server, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--api-key", default=None, help="bearer token (default: DIFFPRUNE_API_KEY)")
    p.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8], help="closed-loop levels (default 1,2,4,8)")
    p.add_argument("--rate", type=rate_list, default=[], help="open-loop arrival rates, requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level at most (default 10)")
    p.add_argument("--max-requests", type=int, default=200, help="requests per level at most (default 200)")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds (default 60)")
    p.add_argument("--prompt", default=None, help="the prompt sent (text pipelines need one)")
    p.add_argument("--steps", type=int, default=None, help="steps asked for (default: the server's)")
    p.add_argument("--n", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--request", default=None, help="the whole request body as JSON (overrides --prompt/--steps/--n)")
    p.add_argument("--out", required=True, help="folder to write (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (the report folder) if it exists")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from diffprune.serve.config import API_KEY_ENV
    from diffprune.serve.loadtest import loadtest

    if args.request is not None:
        try:
            request = json.loads(args.request)
        except ValueError as e:
            raise DiffPruneError(f"--request is not JSON ({e}); give an object like '{{\"prompt\": \"a cat\"}}'.") from None
    else:
        request = {"n": args.n, "seed": 0, **({"prompt": args.prompt} if args.prompt is not None else {}),
                   **({"steps": args.steps} if args.steps is not None else {})}
    report = loadtest(args.url, args.out, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                      concurrency=args.concurrency, rates=args.rate, duration_s=args.duration,
                      max_requests=args.max_requests, request=request, timeout_s=args.timeout,
                      overwrite=args.overwrite)
    print(f"wrote {args.out}/loadtest.md, loadtest.json, loadtest.png ({len(report['levels'])} levels)")
    return 0
