"""deploy.json: one deployment configuration (artifact, backend, scheduler, steps, batch, guidance),
as `diffprune select` chooses it and `diffprune sample` / `diffprune bench` run it.

The file's name, format string and reader are runtime/formats.py's (:func:`read_deploy` is its
``read_deploy_json``); here is how a command takes its settings from deploy files: :func:`apply_deploy`.
"""

from .errors import DiffPruneError
from .formats import DEPLOY_FORMAT, deploy_file, read_deploy_json  # noqa: F401 (DEPLOY_FORMAT re-exported)

read_deploy = read_deploy_json  # the name `diffprune sample` / `bench` and the tests know

# What a deploy.json sets for the command that runs it; each is also a command-line flag (--backend, ...).
SETTINGS = ("backend", "scheduler", "steps", "batch")


def apply_deploy(artifacts, given: dict) -> tuple:
    """``(artifacts, settings, deploys)``: ``artifacts`` with each deploy.json (or folder holding one)
    replaced by the artifact it names; ``given`` (setting -> the command line's value, None where not
    given) with every unset :data:`SETTINGS` entry taken from the deploy files, which must then agree on
    it; and the deploy configurations read, one per artifact (None for a plain artifact).

    The command's own defaults (ddim, 50 steps, ...) are the caller's: a setting neither given nor in a
    deploy file stays None."""
    deploys = [read_deploy(a) if deploy_file(a) else None for a in artifacts]
    read = [d for d in deploys if d]
    settings = dict(given)
    for key in SETTINGS:
        if settings.get(key) is None and read:
            values = {d[key] for d in read}
            if len(values) > 1:
                raise DiffPruneError(f"The deploy.json files given disagree on {key} ({', '.join(map(str, sorted(values)))}); "
                                     f"a benchmark compares at one setting: choose it with --{key}.")
            settings[key] = values.pop()
    return [d["artifact"] if d else a for a, d in zip(artifacts, deploys)], settings, deploys


__all__ = ["DEPLOY_FORMAT", "SETTINGS", "apply_deploy", "deploy_file", "read_deploy"]
