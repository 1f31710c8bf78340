"""The Ray Serve application: a ``Gateway`` deployment (HTTP: auth, limits, validation, deadlines, metrics)
in front of a ``Model`` deployment (one runtime model per replica, Ray Serve's ``@serve.batch`` across
requests). The :class:`~diffprune.serve.config.ServeConfig` is the application's argument.

Routes: ``POST /v1/images``, ``GET /healthz`` (the gateway answers), ``GET /readyz`` (every model replica has
loaded its model), ``GET /metrics`` (Prometheus text).

Answers besides 200: 400 (body not JSON), 401 (bearer token missing or wrong), 404, 405, 408 (the body did
not arrive within 10 s), 413 (body over the cap), 422 (a field: its name in ``error.field``), 503 with Retry-After (more than ``max_ongoing``
requests in progress, or a replica lost mid-request: retry), 504 (past the deadline; the work is
stopped at the next UNet call).
"""

import asyncio
import hmac
import math
import statistics
import threading
import time
from collections import deque

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .config import ServeConfig, key_digest
from .schema import RequestError, model_facts, parse_request


BODY_TIMEOUT_S = 10.0  # a JSON body of at most 64 KiB on a working connection arrives in far less


@serve.deployment(name="model", health_check_period_s=5, health_check_timeout_s=30)
class Model:
    """One runtime model per replica. ``generate(job)`` joins Ray Serve's batch queue; ``_batch`` runs a batch of
    jobs (grouped by compatible settings) in a worker thread, so the replica keeps accepting requests meanwhile."""

    def __init__(self, config: dict):
        from .model import ServedModel

        self.config = ServeConfig.from_dict(config)
        self.model = ServedModel(self.config).open()
        self._batch.set_max_batch_size(self.config.max_batch_requests)
        self._batch.set_batch_wait_timeout_s(self.config.batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # replaced from the config in __init__
    async def _batch(self, jobs: list) -> list:
        return await asyncio.get_running_loop().run_in_executor(None, self.model.run, jobs)

    async def generate(self, job: dict) -> dict:
        cancel = threading.Event()
        try:
            return await self._batch({**job, "cancel": cancel})
        except asyncio.CancelledError:  # the gateway gave up (deadline): the group stops at its next UNet call
            cancel.set()
            raise

    def info(self) -> dict:
        """This replica: backend, seconds its model took to load, process id, resident memory (MiB, Linux)."""
        import os

        rss = None
        try:
            with open("/proc/self/status") as f:
                rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
        return {"backend": self.model.backend, "load_s": self.model.load_s, "pid": os.getpid(), "rss_mib": rss}

    def check_health(self):
        self.model.check()

    def __del__(self):
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    seconds = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
    return registry, {
        "latency": Histogram("diffprune_request_seconds", "Request latency at the gateway, by HTTP status",
                             ["status"], buckets=seconds, registry=registry),
        "queue": Gauge("diffprune_requests_in_progress", "Requests accepted and not yet answered (queue depth)",
                       registry=registry),
        "batch": Histogram("diffprune_batch_requests", "Requests that shared one batch of UNet calls",
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=registry),
        "batch_images": Histogram("diffprune_batch_images", "Images in one batch of UNet calls",
                                  buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry),
        "images": Counter("diffprune_images", "Images generated (rate() of it: images/s)", registry=registry),
        "unet": Histogram("diffprune_unet_seconds", "UNet time of the batch a request ran in", buckets=seconds,
                          registry=registry),
        "queue_wait": Histogram("diffprune_queue_seconds", "Time from acceptance to the start of a request's batch",
                                buckets=seconds, registry=registry),
    }


@serve.deployment(name="gateway", ray_actor_options={"num_cpus": 0})
class Gateway:
    def __init__(self, model, config: dict):
        self.model = model
        self.config = ServeConfig.from_dict(config)
        self.facts = model_facts(self.config)
        self.in_progress = 0
        self.recent = deque(maxlen=50)  # latencies of recent 200s, for Retry-After
        self.registry, self.m = _metrics()

    async def __call__(self, request: Request) -> Response:
        route = (request.method, _path(request))
        if route == ("GET", "/healthz"):
            return JSONResponse({"status": "ok"})
        if route == ("GET", "/readyz"):
            return await self.readyz()
        if route[1] not in ("/v1/images", "/metrics"):
            return _error(404, None, f"No route {route[1]!r}; the routes are POST /v1/images, GET /healthz, "
                                     "GET /readyz, GET /metrics.")
        denied = self.authorize(request)
        if denied is not None:
            return denied
        if route == ("GET", "/metrics"):
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
        if route != ("POST", "/v1/images"):
            return _error(405, None, f"{route[1]} takes {'POST' if route[1] == '/v1/images' else 'GET'}.")
        started = time.perf_counter()
        response = await self.images(request)
        self.m["latency"].labels(str(response.status_code)).observe(time.perf_counter() - started)
        if response.status_code == 200:
            self.recent.append(time.perf_counter() - started)
        return response

    def authorize(self, request: Request) -> Response | None:
        want = self.config.api_key_sha256
        if not want:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = key_digest(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
        if hmac.compare_digest(given.encode(), want.encode()):  # constant time: the digests have equal lengths
            return None
        return _error(401, "authorization", "This server needs a bearer token: send the header "
                                            "'Authorization: Bearer KEY' with the key it was started with.",
                      headers={"WWW-Authenticate": 'Bearer realm="diffprune"'})

    def retry_after(self) -> str:
        return str(max(1, math.ceil(statistics.median(self.recent)))) if self.recent else "1"

    async def images(self, request: Request) -> Response:
        limits = self.config.limits
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return _error(413, None, f"The request body has {length} bytes; the server takes at most "
                                     f"{limits.max_body_bytes} (`diffprune serve --max-body-bytes`).")
        try:
            # the body first, within BODY_TIMEOUT_S: a client that trickles it holds a connection, not a slot
            body = await asyncio.wait_for(_read_capped(request, limits.max_body_bytes), BODY_TIMEOUT_S)
        except RequestError as e:
            return JSONResponse(e.to_dict(), status_code=e.status)
        except asyncio.TimeoutError:
            return _error(408, None, f"The request body did not arrive within {BODY_TIMEOUT_S:g} s; send it whole.")
        if self.in_progress >= self.config.max_ongoing:
            return _error(503, None, f"The server has {self.in_progress} requests in progress, its limit "
                                     f"(--max-ongoing {self.config.max_ongoing}); retry after Retry-After seconds.",
                          headers={"Retry-After": self.retry_after()})
        self.in_progress += 1
        self.m["queue"].inc()
        try:
            job = parse_request(body, self.config, self.facts)
            return await self.generate(job)
        except RequestError as e:
            return JSONResponse(e.to_dict(), status_code=e.status)
        finally:
            self.in_progress -= 1
            self.m["queue"].dec()

    async def generate(self, job: dict) -> Response:
        from ray import exceptions as rx

        pending = self.model.generate.remote(job)
        try:
            result = await asyncio.wait_for(_await(pending), timeout=max(0.0, job["deadline"] - time.time()))
        except asyncio.TimeoutError:
            pending.cancel()
            return _error(504, "deadline_s", "The request passed its deadline (deadline_s, or the server's "
                                             f"--timeout {self.config.limits.timeout_s:g} s) and its work was "
                                             "stopped; retry with fewer steps or images, or a later deadline.")
        except (rx.RayActorError, rx.ActorUnavailableError, rx.TaskCancelledError) as e:
            return _error(503, None, f"The model replica was lost while serving this request "
                                     f"({type(e).__name__}); retry: Ray Serve restarts it.",
                          headers={"Retry-After": self.retry_after()})
        except Exception as e:  # anything else still gets one JSON answer, never a dropped connection
            return _error(500, None, f"The request failed in the model deployment: {type(e).__name__}: "
                                     f"{str(e)[:500]}")
        if "error" in result:
            err = result["error"]
            return _error(err["status"], "deadline_s" if err["status"] == 504 else None, err["message"])
        t = result["timings"]
        self.m["batch"].observe(t["batch_requests"])
        self.m["batch_images"].observe(t["batch_images"])
        self.m["images"].inc(len(result["images"]))
        self.m["unet"].observe(t.get("unet_s", 0.0))
        self.m["queue_wait"].observe(max(0.0, t.get("queue_s", 0.0)))
        return JSONResponse(result)

    async def readyz(self) -> Response:
        def status():
            app = serve.status().applications.get(self.config.name)
            deployment = app.deployments.get("model") if app else None
            running = (deployment.replica_states or {}).get("RUNNING", 0) if deployment else 0
            return {"ready": bool(app and str(app.status.value) == "RUNNING" and running >= self.config.replicas),
                    "replicas_running": running, "replicas_wanted": self.config.replicas,
                    "application": str(app.status.value) if app else None}

        state = await asyncio.get_running_loop().run_in_executor(None, status)
        return JSONResponse(state, status_code=200 if state["ready"] else 503,
                            headers=None if state["ready"] else {"Retry-After": "1"})


def _path(request: Request) -> str:
    """The path below the application's route prefix (Ray Serve passes the prefix as the ASGI root_path)."""
    path, root = request.scope.get("path", "/"), request.scope.get("root_path", "").rstrip("/")
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/") or "/"


async def _await(response):
    return await response


async def _read_capped(request: Request, cap: int) -> bytes:
    """The body, refused (413) as soon as it passes ``cap`` bytes, whatever Content-Length said."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise RequestError(413, None, f"The request body passed {cap} bytes, the server's cap "
                                          "(`diffprune serve --max-body-bytes`).")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, field, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(RequestError(status, field, message).to_dict(), status_code=status, headers=headers)


def model_options(config: ServeConfig, cpus: float) -> dict:
    """Ray Serve options of the model deployment. Each replica reserves its share of the ``cpus`` Ray has, at most
    one, so replicas spread over a cluster's nodes and ``--replicas`` above the CPU count still starts. With
    ``max_replicas`` Ray Serve autoscales between ``replicas`` and it, aiming at a full batch per replica."""
    most = config.max_replicas or config.replicas
    options = {"max_ongoing_requests": max(config.max_ongoing, config.max_batch_requests),
               "ray_actor_options": {"num_cpus": min(1.0, cpus / most)},
               "graceful_shutdown_timeout_s": config.limits.timeout_s}
    if config.max_replicas_per_node:
        options["max_replicas_per_node"] = config.max_replicas_per_node
    if config.max_replicas:
        options["autoscaling_config"] = {"min_replicas": config.replicas, "max_replicas": config.max_replicas,
                                         "target_ongoing_requests": config.max_batch_requests}
    else:
        options["num_replicas"] = config.replicas
    return options


def build_app(config: ServeConfig, cpus: float | None = None):
    """The application for ``serve.run``: the gateway bound to the model deployment, the config their argument.
    ``cpus``: the CPUs Ray has (default: ask Ray)."""
    import ray

    cpus = cpus if cpus is not None else float(ray.cluster_resources().get("CPU", 1))
    model = Model.options(**model_options(config, cpus)).bind(config.to_dict())
    full = {**config.to_dict(), "api_key_sha256": config.api_key_sha256}
    return Gateway.options(
        # on the head node, beside the HTTP proxy (server.py starts it there only): losing a worker machine then
        # loses model replicas, whose requests the gateway answers with 503, never the gateway itself
        ray_actor_options={"num_cpus": 0, "resources": {"node:__internal_head__": 0.001}},
        max_ongoing_requests=config.max_ongoing + 64,  # past the limit the gateway answers 503 itself, at once
        graceful_shutdown_timeout_s=config.limits.timeout_s,
    ).bind(model, full)
