"""What a served model is and how it is served: one :class:`ServeConfig`, passed as the Ray Serve
application's argument, written into every response, and resolved from the TARGET the user gives.

TARGET is what `diffprune sample` takes: a pipeline export (pipeline.json), a UNet export or engine
folder (model.json / engine.json), a deploy.json from `diffprune select`, or the select folder holding
one. A deploy.json's backend, scheduler, steps and batch become the defaults.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

from diffprune.runtime.errors import DiffPruneError

API_KEY_ENV = "DIFFPRUNE_API_KEY"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond it the answer is 422 naming the field (413 for the body)."""

    max_n: int = 8  # images per request
    max_steps: int = 100
    max_prompt_chars: int = 1000  # per prompt; CLIP reads 77 tokens, the rest is cut with a note
    max_body_bytes: int = 64 * 1024  # a request with 8 prompts of 1,000 characters fits in 16 KiB
    timeout_s: float = 60.0  # the deadline of a request that sets none, and the most one may set


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """One served model. ``artifact`` and ``kind`` come from :func:`resolve_target`; the rest are the options of
    `diffprune serve`.

    - ``replicas``: model replicas, or the least of them when ``max_replicas`` turns autoscaling on (each one runtime model on ``threads`` CPU threads; by default the machine's
      cores divided among the replicas, so replicas do not oversubscribe the cores); ``max_replicas_per_node``
      caps them per machine of a Ray cluster (1: one per machine, spread)
    - ``max_ongoing``: requests in progress in the whole service; one more gets 503 with Retry-After
    - ``max_batch_requests`` / ``batch_wait_s``: Ray Serve's batching: up to this many queued requests join
      one batch, waiting at most this long for company; requests with the same steps, scheduler and guidance
      then share UNet calls (within the export's batch range)
    - ``api_key_sha256``: the SHA-256 of the bearer token (the token itself never enters Ray's state)
    """

    target: str
    artifact: str
    kind: str  # "pipeline" or "unet"
    backend: str = "auto"
    threads: int | None = None
    replicas: int = 1
    max_replicas: int | None = None  # set: autoscale between replicas and max_replicas
    max_replicas_per_node: int | None = None  # 1 spreads the replicas over the cluster's machines
    scheduler: str | None = None  # default scheduler (deploy.json's); None: the model's own
    steps: int = 50
    batch: int | None = None  # images per UNet call (default: what the export allows)
    max_ongoing: int = 16
    max_batch_requests: int = 8
    batch_wait_s: float = 0.02
    limits: Limits = Limits()
    api_key_sha256: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    name: str = "diffprune"

    def to_dict(self) -> dict:
        """JSON-ready; the key's hash stays out of what responses and logs show."""
        d = dataclasses.asdict(self)
        d["api_key_sha256"] = None
        d["auth"] = "bearer" if self.api_key_sha256 else "none"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ServeConfig":
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**d, "limits": Limits(**d.get("limits", {}))})

    @property
    def replica_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.max_replicas or self.replicas))


def key_digest(key: str | None) -> str | None:
    """The SHA-256 hex digest a bearer token is compared by (both sides hashed, then hmac.compare_digest)."""
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def resolve_target(target, **options) -> ServeConfig:
    """A :class:`ServeConfig` for TARGET; ``options`` are ServeConfig fields (None leaves the default)."""
    from diffprune.runtime.artifact import describe
    from diffprune.runtime.formats import deploy_file, is_pipeline, read_deploy_json, read_pipeline_json

    options = {k: v for k, v in options.items() if v is not None}
    path = Path(str(target))
    deploy = read_deploy_json(path) if deploy_file(path) else {}
    artifact = Path(deploy.get("artifact", path)).resolve()
    if not artifact.exists():
        raise DiffPruneError(f"TARGET {str(target)!r} does not exist. Give a pipeline export (pipeline.json), a UNet "
                             "export or engine folder (model.json / engine.json), a deploy.json, or a select folder.")
    if is_pipeline(artifact):
        read_pipeline_json(artifact)  # checked here, once, before any replica starts
        kind = "pipeline"
    else:
        try:
            _, _, meta = describe(artifact)
        except DiffPruneError as e:
            raise DiffPruneError(f"TARGET {str(target)!r} is not something `diffprune serve` can serve: {e} Give a "
                                 "pipeline export, a UNet export or engine folder, a deploy.json, or a select folder.") from None
        conditioned = [i["name"] for i in meta.get("inputs", []) if i["name"] not in ("sample", "timestep")]
        if conditioned:
            raise DiffPruneError(
                f"{str(artifact)!r} is a UNet conditioned on {', '.join(conditioned)}: alone it cannot turn a prompt "
                "or a class into images. Serve the pipeline export it belongs to (the folder with pipeline.json).")
        kind = "unet"
    for key in ("backend", "scheduler", "steps", "batch"):
        if key in deploy:
            options.setdefault(key, deploy[key])
    if "limits" in options and isinstance(options["limits"], dict):
        options["limits"] = Limits(**{k: v for k, v in options["limits"].items() if v is not None})
    config = ServeConfig(target=str(target), artifact=str(artifact), kind=kind, **options)
    check_config(config)
    return config


def check_config(config: ServeConfig) -> None:
    """Every option in range, said in one paragraph naming the option."""
    positive = {"replicas": config.replicas, "max_ongoing": config.max_ongoing,
                "max_batch_requests": config.max_batch_requests, "steps": config.steps,
                "max_n": config.limits.max_n, "max_steps": config.limits.max_steps,
                "max_prompt_chars": config.limits.max_prompt_chars, "max_body_bytes": config.limits.max_body_bytes}
    for name, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DiffPruneError(f"--{name.replace('_', '-')} is {value!r}; it must be a whole number >= 1.")
    for name, value in {"threads": config.threads, "batch": config.batch,
                        "max_replicas_per_node": config.max_replicas_per_node}.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DiffPruneError(f"--{name} is {value!r}; it must be a whole number >= 1 (or left out).")
    if config.max_replicas is not None and (not isinstance(config.max_replicas, int) or
                                            config.max_replicas < config.replicas):
        raise DiffPruneError(f"--replicas {config.replicas}-{config.max_replicas}: the most replicas must be a whole "
                             "number at least the least (e.g. --replicas 1-4).")
    if not config.limits.timeout_s > 0 or not config.batch_wait_s >= 0:
        raise DiffPruneError(f"--timeout {config.limits.timeout_s!r} must be > 0 seconds and --batch-wait-ms "
                             f"{config.batch_wait_s * 1000!r} >= 0.")
    if not 0 < config.port < 65536:
        raise DiffPruneError(f"--port {config.port} is outside 1..65535.")
    from diffprune.runtime.runners import parse_backend, resolve_backend
    from diffprune.runtime.schedulers import SCHEDULERS

    parse_backend(resolve_backend(config.backend))
    if config.scheduler is not None and config.scheduler not in SCHEDULERS:
        raise DiffPruneError(f"Scheduler {config.scheduler!r} is unknown; allowed: {', '.join(SCHEDULERS)}.")
