"""Model sources that are neither folders nor reachable hub ids fail in a second, with a clear error."""

import pytest

from diffprune import DiffPruneError
from diffprune.sources.loader import load_source


def test_a_mistyped_path_is_not_retried_on_the_hub(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def unreachable(repo_id, **kw):
        calls.append((repo_id, kw.get("timeout")))
        raise ConnectionError("[Errno -2] Name or service not known")  # what DNS failure looks like

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DiffPruneError, match="not an existing folder, and the hub cannot be reached.*HF_HUB_OFFLINE=1"):
        load_source("mistyped/folder")
    assert calls == [("mistyped/folder", 10)]  # one short request, no download retries


def test_a_name_the_hub_does_not_know_says_check_the_path(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    class NotFound(RepositoryNotFoundError):
        def __init__(self):  # the real one wants an HTTP response
            Exception.__init__(self, "404 Repository Not Found")

    def not_found(repo_id, **kw):
        raise NotFound()

    monkeypatch.setattr(huggingface_hub, "model_info", not_found)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(DiffPruneError, match=r"not an existing folder \(though models/ is one\).*no repository"):
        load_source("models/unet-v2")


def test_offline_asks_nothing(monkeypatch):
    import huggingface_hub

    from diffprune.sources.loader import check_hub_id

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: pytest.fail("the hub was asked while offline"))
    check_hub_id("google/ddpm-cifar10-32")
