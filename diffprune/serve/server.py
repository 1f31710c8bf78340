"""Start and stop the application on Ray: ``start(config)`` returns its URL; ``serve_forever(config)`` is
`diffprune serve`: it runs until Ctrl-C or SIGTERM, then drains the requests in progress and stops."""

import signal
import threading

from diffprune.runtime.errors import DiffPruneError

from .config import ServeConfig


def start(config: ServeConfig, address: str | None = None, route_prefix: str = "/") -> str:
    """Deploy ``config`` on the Ray cluster at ``address`` (None: the one `ray start` left on this machine or
    named by RAY_ADDRESS, else a new local instance); return the URL it answers at."""
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(build_app(config), name=config.name, route_prefix=route_prefix)
    except Exception as e:  # a replica that cannot load its model: Ray's error says why, in a traceback
        raise DiffPruneError(f"The application for {config.target!r} did not start: {e}".strip()[:4000]) from None
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}{route_prefix.rstrip('/')}"


def stop(config: ServeConfig) -> None:
    """Delete the application (Ray Serve lets requests in progress finish, up to the deadline) and stop Serve."""
    from ray import serve

    serve.delete(config.name)
    serve.shutdown()


def serve_forever(config: ServeConfig, address: str | None = None, on_ready=print) -> None:
    url = start(config, address)
    on_ready(url)
    done = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *a: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(config)
