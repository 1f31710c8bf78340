"""Start and stop the application on Ray: ``start(config)`` returns its URL; ``serve_forever(config)`` is
`diffprune serve`: it runs until Ctrl-C or SIGTERM, then drains the requests in progress and stops."""

import signal
import threading

from diffprune.runtime.errors import DiffPruneError

from .config import ServeConfig


def start(config: ServeConfig, address: str | None = None, route_prefix: str = "/") -> str:
    """Deploy ``config`` on the Ray cluster at ``address`` (None: the one `ray start` left on this machine or
    named by RAY_ADDRESS, else a new local instance); return the URL it answers at."""
    return start_many([(config, route_prefix)], address)[0]


def start_many(apps: list, address: str | None = None) -> list:
    """Deploy several ``(config, route_prefix)`` applications at once (they start in parallel) on one Serve
    instance, which binds the first config's host and port; return their URLs."""
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    first = apps[0][0]
    # One HTTP proxy, on the head node, that clients (or a load balancer) address; Ray's default of one per node
    # would make every machine of a cluster listen on the port.
    serve.start(proxy_location="HeadOnly", http_options={"host": first.host, "port": first.port})
    targets = [serve.RunTarget(build_app(config), name=config.name, route_prefix=prefix) for config, prefix in apps]
    try:
        serve.run_many(targets)
    except Exception as e:  # a replica that cannot load its model: Ray's error says why, in a traceback
        names = ", ".join(repr(config.target) for config, _ in apps)
        raise DiffPruneError(f"The application for {names} did not start: {e}".strip()[:4000]) from None
    host = f"[{first.host}]" if ":" in first.host else first.host
    return [f"http://{host}:{first.port}{prefix.rstrip('/')}" for _, prefix in apps]


def stop(config: ServeConfig) -> None:
    """Delete the application (Ray Serve lets requests in progress finish, up to the deadline); stop Serve too when
    no other application is left on it (a shared cluster's other applications keep running)."""
    from ray import serve

    serve.delete(config.name)
    if not serve.status().applications:
        serve.shutdown()


def serve_forever(config: ServeConfig, address: str | None = None, on_ready=print) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then drain and stop. Both signals are caught here: a shell starts a
    background job with SIGINT ignored, and a process manager stops services with SIGTERM."""
    url = start(config, address)
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *a: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    on_ready(url)
    try:
        while not done.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop(config)
