"""``diffprune serve``: a shell over :func:`diffprune.serve.server.serve_forever` (Ray Serve, torch-free)."""

import argparse
import os

from ._common import add_backend_argument, missing_note, require

NAME = "serve"
SERVE_INSTALL = "pip install 'diffprune[serve]'"


def replica_range(text):
    """argparse type: ``N`` -> (N, None); ``MIN-MAX`` -> (MIN, MAX), autoscaling."""
    low, dash, high = text.partition("-")
    try:
        lo, hi = int(low), (int(high) if dash else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of replicas like 2, or bounds like 1-4; got {text!r}") from None
    if lo < 1 or (hi is not None and hi < lo):
        raise argparse.ArgumentTypeError(f"expected replicas >= 1 and MIN <= MAX (like 1-4); got {text!r}")
    return lo, hi


def register(subparsers):
    p = subparsers.add_parser(
        NAME, help="serve an export over HTTP with Ray Serve (batching, limits, metrics)"
                   + missing_note("ray", install=SERVE_INSTALL, reason=f"needs Ray Serve, {SERVE_INSTALL}"),
        description="Serve a pipeline or UNet export on Ray Serve: POST /v1/images (JSON in, base64 PNGs, the "
                    "configuration that ran and timings out), GET /healthz, /readyz, /metrics (Prometheus). "
                    "Concurrent requests with the same steps, scheduler and guidance share UNet calls; a "
                    "request's images are those it gets alone. Runs on the Ray cluster `ray start` left on this "
                    "machine (or --address), else on a new local one; Ctrl-C drains the requests in progress.",
        epilog="examples:\n  diffprune serve digits-text-onnx --port 8000\n"
               "  DIFFPRUNE_API_KEY=secret diffprune serve select-out/deploy.json --replicas 2 --max-ongoing 32\n"
               "  curl -s localhost:8000/v1/images -H 'Content-Type: application/json' "
               "-d '{\"prompt\": \"a handwritten digit seven\", \"n\": 2, \"seed\": 0}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="TARGET", help="pipeline export (pipeline.json), UNet export or engine folder, "
                                                    "a deploy.json from `diffprune select`, or its folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port of the HTTP proxy (default 8000)")
    p.add_argument("--replicas", type=replica_range, default=(1, None), metavar="N or MIN-MAX",
                   help="model replicas (default 1); MIN-MAX autoscales between them on the requests in progress")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: the DIFFPRUNE_API_KEY environment variable, "
                        "which, unlike this option, other users cannot read in the process list; none: no "
                        "authentication)")
    p.add_argument("--max-replicas-per-node", type=int, default=None,
                   help="on a Ray cluster, at most this many replicas per machine (1 spreads them over the machines)")
    add_backend_argument(p, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per replica (default: this machine's cores divided among the replicas)")
    p.add_argument("--max-ongoing", type=int, default=16,
                   help="requests in progress at once; more get 503 with Retry-After (default 16)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a request may take (a request's deadline_s may ask for less); past it 504 "
                        "and its work stops (default 60)")
    p.add_argument("--max-batch-requests", type=int, default=8,
                   help="requests Ray Serve batches together (default 8); 1 turns batching off")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="how long a batch waits for more requests (default 20 ms)")
    p.add_argument("--max-n", type=int, default=8, help="most images per request (default 8)")
    p.add_argument("--max-steps", type=int, default=100, help="most sampling steps per request (default 100)")
    p.add_argument("--max-prompt-chars", type=int, default=1000, help="longest prompt in characters (default 1000)")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="largest request body (default 65536)")
    p.add_argument("--steps", type=int, default=None, help="steps of a request that sets none (default 50, or deploy.json's)")
    p.add_argument("--scheduler", default=None,
                   help="scheduler of a request that sets none (default: deploy.json's, or the model's own)")
    p.add_argument("--batch", type=int, default=None, help="images per UNet call (default: what the export allows)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, or the cluster `ray start` left here, else a "
                        "new local Ray instance)")
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    from diffprune.serve.config import API_KEY_ENV, Limits, key_digest, resolve_target

    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    limits = Limits(max_n=args.max_n, max_steps=args.max_steps, max_prompt_chars=args.max_prompt_chars,
                    max_body_bytes=args.max_body_bytes, timeout_s=args.timeout)
    return resolve_target(args.target, backend=args.backend, threads=args.threads, replicas=args.replicas[0],
                          max_replicas=args.replicas[1], max_replicas_per_node=args.max_replicas_per_node,
                          scheduler=args.scheduler, steps=args.steps, batch=args.batch, max_ongoing=args.max_ongoing,
                          max_batch_requests=args.max_batch_requests, batch_wait_s=args.batch_wait_ms / 1000,
                          limits=limits, api_key_sha256=key_digest(key), host=args.host, port=args.port)


def run(args) -> int:
    require("ray", install=SERVE_INSTALL, why="`diffprune serve`", what="Ray Serve")
    from diffprune.serve.server import serve_forever

    config = config_from_args(args)

    def ready(url):
        count = f"{config.replicas}-{config.max_replicas}" if config.max_replicas else str(config.replicas)
        print(f"serving {config.target} ({config.kind}) at {url}/v1/images with {count} replica(s), "
              f"{config.replica_threads} thread(s) each; auth: {'bearer' if config.api_key_sha256 else 'none'}; "
              "Ctrl-C stops", flush=True)

    serve_forever(config, address=args.address, on_ready=ready)
    print("stopped: requests in progress were answered", flush=True)
    return 0
