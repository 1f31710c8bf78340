"""deploy.json: one deployment configuration (artifact, backend, scheduler, steps, batch, guidance),
as `diffprune select` chooses it and `diffprune sample` / `diffprune bench` run it.

The artifact path is stored relative to the file's folder, so the select report and its work folder
can move together; an absolute path is kept as it is.
"""

from pathlib import Path

from .artifact import read_json
from .errors import DiffPruneError

DEPLOY_FORMAT = "diffprune.deploy/1"
FIELDS = {"artifact": str, "backend": str, "scheduler": str, "steps": int, "batch": int}


def deploy_file(path) -> Path | None:
    """The deploy.json that ``path`` names (the file, or a folder holding one beside no model), else None."""
    path = Path(str(path))
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / "deploy.json").is_file() and not (path / "model.json").is_file() \
            and not (path / "engine.json").is_file():
        return path / "deploy.json"
    return None


def read_deploy(path) -> dict:
    """The configuration in a deploy.json, its ``artifact`` an absolute path that exists."""
    file = deploy_file(path)
    if file is None:
        raise DiffPruneError(f"{str(path)!r} is not a deploy.json (or a folder holding one); `diffprune select` "
                             "writes one beside its report.")
    config = read_json(file, "re-run `diffprune select`")
    if not isinstance(config, dict) or config.get("format") != DEPLOY_FORMAT:
        raise DiffPruneError(f"{str(file)!r} is not a deployment configuration (its format is "
                             f"{config.get('format') if isinstance(config, dict) else None!r}, expected "
                             f"{DEPLOY_FORMAT!r}); give the deploy.json that `diffprune select` wrote.")
    for key, kind in FIELDS.items():
        value = config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise DiffPruneError(f"{str(file)!r}: {key} is {value!r}, expected "
                                 f"{'a positive integer' if kind is int else 'a string'}; re-run `diffprune select`.")
    if config.get("guidance") is not None:
        raise DiffPruneError(f"{str(file)!r} sets guidance {config['guidance']!r}, which applies to text-conditioned "
                             "pipelines; this runtime version samples unconditional models only.")
    artifact = Path(config["artifact"])
    artifact = artifact if artifact.is_absolute() else (file.parent / artifact)
    if not artifact.exists():
        raise DiffPruneError(f"{str(file)!r} names the artifact {config['artifact']!r}, which is not at "
                             f"{str(artifact)!r}; keep the select report beside its .work folder, or edit the path.")
    return {**config, "artifact": str(artifact.resolve()), "file": str(file)}
