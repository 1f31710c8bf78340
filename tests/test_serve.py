"""`diffprune serve` on Ray Serve and `diffprune loadtest`: one Ray instance for the whole module (loopback
only, 2 CPUs), two applications on it (a tiny text-to-image pipeline behind a bearer token, a tiny pixel
UNet with tight limits), every process stopped at the end. The request schema, the load test's statistics
and the replica's batching are also tested without Ray."""

import json
import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the serve extra is not installed: pip install -e '.[serve]'")

from diffprune.errors import DiffPruneError  # noqa: E402
from diffprune.serve.client import Client, ServeError, decode_images  # noqa: E402
from diffprune.serve.config import Limits, ServeConfig, key_digest, resolve_target  # noqa: E402
from diffprune.serve.loadtest import check_loopback, summarize  # noqa: E402
from diffprune.serve.schema import RequestError, model_facts, parse_request  # noqa: E402

KEY = "s3cret-token"
TEXT_FACTS = {"kind": "text-to-image", "text": True, "class_conditional": False, "num_classes": None,
              "scheduler": "ddim", "guidance": 7.5}


@pytest.fixture(scope="module")
def sd_export(tmp_path_factory):
    from diffprune.export import export_pipeline

    out = tmp_path_factory.mktemp("serve-sd") / "onnx"
    export_pipeline("arch:tiny-sd", out, batch=(1, 2, 4), exporter="torchscript", validate_batches=[1, 2],
                    progress=None)
    return out


# -- without Ray ------------------------------------------------------------------------------------------

def _config(**limits):
    return ServeConfig(target="t", artifact="t", kind="pipeline", steps=4, limits=Limits(**limits))


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": "a", "stepz": 3}', 422, "stepz"),
    (b'{"prompt": "a", "steps": "3"}', 422, "steps"),
    (b'{"prompt": "a", "steps": true}', 422, "steps"),
    (b'{"prompt": "a", "steps": 101}', 422, "steps"),
    (b'{"prompt": "a", "n": 9}', 422, "n"),
    (b'{"prompt": 7}', 422, "prompt"),
    (b'{"prompts": ["a", "b"], "prompt": "a"}', 422, "prompts"),
    (b'{"prompts": ["a", "b"], "n": 3}', 422, "n"),
    (b'{"n": 1}', 422, "prompt"),
    (b'{"prompt": "a", "guidance": -1}', 422, "guidance"),
    (b'{"prompt": "a", "scheduler": "plms"}', 422, "scheduler"),
    (b'{"prompt": "a", "seed": -1}', 422, "seed"),
    (b'{"prompt": "a", "class_label": 3}', 422, "class_label"),
    (b'{"prompt": "a", "deadline_s": 61}', 422, "deadline_s"),
    (b'{"prompt": "a", "negative_prompt": ["x"], "n": 2}', 422, "negative_prompt"),
])
def test_a_bad_request_is_refused_naming_its_field(body, status, field):
    with pytest.raises(RequestError) as e:
        parse_request(body, _config(), TEXT_FACTS)
    assert (e.value.status, e.value.field) == (status, field), e.value.message
    if field:
        assert field in e.value.message


def test_limits_and_defaults_of_a_valid_request():
    config = _config(max_prompt_chars=10, max_body_bytes=100)
    with pytest.raises(RequestError) as e:
        parse_request(b'{"prompt": "' + b"x" * 11 + b'"}', config, TEXT_FACTS)
    assert e.value.field == "prompt" and "at most 10" in e.value.message
    with pytest.raises(RequestError) as e:
        parse_request(b'{"prompt": "' + b"x" * 100 + b'"}', config, TEXT_FACTS)
    assert e.value.status == 413
    job = parse_request(b'{"prompt": "a cat", "n": 2, "seed": 5}', config, TEXT_FACTS, now=100.0)
    assert job["prompts"] == ["a cat", "a cat"] and job["negatives"] is None
    assert (job["steps"], job["scheduler"], job["guidance"], job["seed"]) == (4, "ddim", 7.5, 5)  # defaults resolved
    assert job["deadline"] == 160.0
    pixel = {**TEXT_FACTS, "kind": "unet", "text": False, "guidance": 1.0}
    with pytest.raises(RequestError, match="takes no prompt"):
        parse_request(b'{"prompt": "a cat"}', config, pixel)
    with pytest.raises(RequestError) as e:
        parse_request(b'{"guidance": 3}', config, pixel)
    assert e.value.field == "guidance"


def test_summary_percentiles_throughput_and_errors_by_kind():
    records = [{"latency_s": float(v), "kind": "ok"} for v in range(1, 101)] + [
        {"latency_s": 0.1, "kind": "503"}, {"latency_s": 9.0, "kind": "504"}, {"latency_s": 0.0, "kind": "503"}]
    s = summarize(records, elapsed_s=50.0)
    assert (s["requests"], s["ok"], s["throughput_rps"]) == (103, 100, 2.0)
    assert s["p50_s"] == pytest.approx(50.5) and s["p99_s"] == pytest.approx(99.01)
    assert s["errors"] == {"503": 2, "504": 1}
    assert summarize([{"latency_s": 1.0, "kind": "4xx"}], 1.0)["p99_s"] is None


def test_the_highest_rate_under_a_p99_target():
    from diffprune.serve.loadtest import max_rate_under_slo

    level = lambda rate, p99, errors=None, n=100: {"mode": "open", "throughput_rps": rate, "p99_s": p99,  # noqa: E731
                                                   "errors": errors or {}, "requests": n}
    levels = [level(1.0, 0.2), level(2.0, 0.3), level(3.0, 0.39), level(4.0, 0.9), level(3.5, 0.1, {"503": 5})]
    assert max_rate_under_slo(levels, slo_s=0.4) == 3.0  # 4/s breaks the p99; 3.5/s refused 5 %
    assert max_rate_under_slo(levels, slo_s=0.05) is None
    assert max_rate_under_slo([{**level(9.0, 0.1), "mode": "closed"}], slo_s=1.0) is None  # open loop only


def test_replicas_share_the_cpus_and_autoscale_within_bounds(tiny_export):
    from diffprune.cli import build_parser
    from diffprune.cli.serve import config_from_args
    from diffprune.serve.app import model_options

    fixed = model_options(resolve_target(tiny_export, replicas=4), cpus=2)
    assert fixed["num_replicas"] == 4 and fixed["ray_actor_options"]["num_cpus"] == 0.5  # 4 replicas still fit
    assert "autoscaling_config" not in fixed
    args = build_parser().parse_args(["serve", str(tiny_export), "--replicas", "1-4", "--max-replicas-per-node", "1"])
    config = config_from_args(args)
    scaled = model_options(config, cpus=8)
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert "num_replicas" not in scaled and scaled["max_replicas_per_node"] == 1
    assert scaled["ray_actor_options"]["num_cpus"] == 1.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", str(tiny_export), "--replicas", "4-1"])


def test_loadtest_loads_loopback_only():
    for url in ("http://127.0.0.1:8000", "http://localhost:8000"):
        check_loopback(url)
    for url in ("http://10.1.2.3:8000", "http://192.168.0.1"):
        with pytest.raises(DiffPruneError, match="loopback"):
            check_loopback(url)


def test_targets_are_resolved_and_checked(tiny_export, sd_export, tmp_path):
    assert resolve_target(tiny_export).kind == "unet"
    assert resolve_target(sd_export).kind == "pipeline"
    with pytest.raises(DiffPruneError, match="conditioned on encoder_hidden_states"):
        resolve_target(sd_export / "unet")  # a pipeline's UNet alone cannot turn a prompt into images
    with pytest.raises(DiffPruneError, match="does not exist"):
        resolve_target(tmp_path / "nothing")
    with pytest.raises(DiffPruneError, match="--max-ongoing"):
        resolve_target(tiny_export, max_ongoing=0)
    deploy = tmp_path / "deploy.json"
    deploy.write_text(json.dumps({"format": "diffprune.deploy/1", "artifact": str(tiny_export), "backend": "ort-cpu",
                                  "scheduler": "euler", "steps": 7, "batch": 2}))
    config = resolve_target(tmp_path)
    assert (config.kind, config.backend, config.scheduler, config.steps, config.batch) == ("unet", "ort-cpu", "euler", 7, 2)


def _job(config, body):
    return parse_request(json.dumps(body).encode(), config, model_facts(config))


def test_a_batch_of_requests_gives_each_the_images_it_gets_alone(tiny_export, sd_export):
    from diffprune.runtime import Pipeline, Sampler, make_scheduler, open_runner
    from diffprune.serve.model import ServedModel

    # pixel UNet: two requests, different seeds and sizes, share UNet calls; each equals `diffprune sample` alone
    config = resolve_target(tiny_export, backend="ort-cpu", threads=1, steps=3)
    model = ServedModel(config).open()
    try:
        a, b = _job(config, {"n": 3, "seed": 1}), _job(config, {"n": 2, "seed": 2, "scheduler": "ddim"})
        together = model.run([a, b])
        assert together[0]["timings"]["batch_requests"] == 2 and together[0]["timings"]["batch_images"] == 5
        with open_runner(tiny_export, "ort-cpu", threads=1) as runner:
            for job, out in zip((a, b), together):
                alone = Sampler(runner, make_scheduler("ddim", runner.scheduler_config)).generate(
                    job["n"], seed=job["seed"], steps=3)
                assert np.array_equal(decode_images(out), alone)
        # a stochastic scheduler runs each request alone (the runtime takes one seed per call)
        c, d = _job(config, {"n": 1, "seed": 1, "scheduler": "ddpm"}), _job(config, {"n": 1, "seed": 2, "scheduler": "ddpm"})
        assert [r["timings"]["batch_requests"] for r in model.run([c, d])] == [1, 1]
        late = {**a, "deadline": time.time() - 1}
        assert model.run([late])[0]["error"]["status"] == 504
    finally:
        model.close()
    # text-to-image pipeline: different prompts and seeds, one doubled batch through the UNet
    config = resolve_target(sd_export, backend="ort-cpu", threads=1, steps=2)
    model = ServedModel(config).open()
    try:
        a = _job(config, {"prompt": "a red square", "seed": 3})
        b = _job(config, {"prompts": ["a blue circle", "a green cat"], "seed": 4})
        together = model.run([a, b])
        assert together[1]["timings"]["batch_requests"] == 2
        with Pipeline(sd_export, "ort-cpu", threads=1) as pipe:
            for job, out in zip((a, b), together):
                alone = pipe.generate(job["prompts"], steps=2, seed=job["seed"])
                assert np.array_equal(decode_images(out), alone)
    finally:
        model.close()


def test_a_pixel_text_pipeline_serves_prompts_batched(pixel_text):
    """builtin:digits-text's kind (text-to-image, no decoder): prompts are validated as text, requests share UNet
    calls, and each gets the images the runtime gives it alone."""
    from diffprune.runtime import Pipeline
    from diffprune.serve.model import ServedModel

    _, export = pixel_text
    config = resolve_target(export, backend="ort-cpu", threads=1, steps=2)
    assert model_facts(config)["text"]
    model = ServedModel(config).open()
    try:
        a = _job(config, {"prompt": "a seven", "seed": 5, "guidance": 1.5})
        b = _job(config, {"prompt": "a two", "seed": 6, "guidance": 1.5})
        together = model.run([a, b])
        assert [r["timings"]["batch_requests"] for r in together] == [2, 2]
        with Pipeline(export, "ort-cpu", threads=1) as pipe:
            for job, out in zip((a, b), together):
                alone = pipe.generate(job["prompts"], steps=2, seed=job["seed"], guidance=1.5)
                assert np.array_equal(decode_images(out), alone)
    finally:
        model.close()


# -- on Ray Serve --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(sd_export):
    """One Ray instance for the module, a two-node test cluster on this machine (Ray's ``Cluster``: a head and a
    worker node, one CPU each), with one application: the tiny text-to-image pipeline behind a bearer token, with
    tight limits (3 requests in progress at most). Loopback only; every process stopped at the end."""
    from ray import serve
    from ray.cluster_utils import Cluster

    from diffprune.serve.server import start

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        config = resolve_target(sd_export, backend="ort-cpu", threads=1, steps=2, port=_free_port(), name="sd",
                                api_key_sha256=key_digest(KEY), max_ongoing=3, batch_wait_s=0.05,
                                limits=Limits(max_steps=1000, max_n=4, timeout_s=30))
        yield {"url": start(config), "config": config, "cluster": cluster, "worker": worker}
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def served(app):
    return app["url"]


def _slow(url, results, steps=60):
    """A request that keeps the replica busy for a few seconds (tiny UNet, unguided, ~30 ms a step here)."""
    def go():
        results.append(Client(url, api_key=KEY, timeout=30).request("POST", "/v1/images", json.dumps(
            {"prompt": "slow", "guidance": 1.0, "steps": steps, "seed": 9}).encode()))
    thread = threading.Thread(target=go)
    thread.start()
    return thread


def _in_progress(url) -> int:
    text = Client(url, api_key=KEY).metrics()
    return int(float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("diffprune_requests_in_progress "))))


def _wait_until(predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_request_gets_pngs_and_the_configuration_that_ran(served, sd_export):
    from diffprune.runtime import Pipeline

    client = Client(served, api_key=KEY)
    assert client.ready()
    result = client.generate(prompt="a handwritten digit seven", n=2, seed=11, guidance=3.0)
    images = decode_images(result)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    config = result["config"]
    assert (config["steps"], config["scheduler"], config["guidance"], config["seed"], config["n"]) == (2, "ddim", 3.0, 11, 2)
    assert config["backend"] == "ort-cpu" and config["artifact"] == str(sd_export.resolve())
    assert {"queue_s", "text_encoder_s", "unet_s", "decoder_s", "total_s", "batch_requests"} <= set(result["timings"])
    with Pipeline(sd_export, "ort-cpu", threads=1) as pipe:
        assert np.array_equal(images, pipe.generate("a handwritten digit seven", n=2, steps=2, seed=11, guidance=3.0))


def test_bearer_token_is_required_and_probes_stay_open(served):
    anonymous, wrong = Client(served), Client(served, api_key="not-it")
    for client in (anonymous, wrong):
        with pytest.raises(ServeError) as e:
            client.generate(prompt="a cat")
        assert e.value.status == 401 and e.value.field == "authorization"
        assert client.request("GET", "/metrics")[0] == 401
    status, headers, _ = anonymous.request("POST", "/v1/images", b"{}")
    assert status == 401 and headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
    assert anonymous.request("GET", "/healthz")[0] == 200 and anonymous.request("GET", "/readyz")[0] == 200
    metrics = Client(served, api_key=KEY).metrics()
    assert 'status="401"' not in metrics  # refused before any work or timing
    assert "diffprune_batch_requests_bucket" in metrics and "diffprune_images_total" in metrics


def test_field_errors_and_the_body_cap_over_http(served):
    client = Client(served, api_key=KEY)
    cases = [(b"{oops", 400, None), (b'{"prompt": "a", "colour": 1}', 422, "colour"),
             (b'{"prompt": "a", "steps": 1001}', 422, "steps"), (b'{"prompt": "a", "n": "2"}', 422, "n"),
             (json.dumps({"prompt": "x" * 70000}).encode(), 413, None)]
    for body, status, field in cases:
        got, _, raw = client.request("POST", "/v1/images", body)
        assert got == status, raw
        assert json.loads(raw)["error"]["field"] == field
    assert client.request("GET", "/v2/nothing")[0] == 404 and client.request("GET", "/v1/images")[0] == 405
    assert client.generate(prompt="still serving", seed=1)["images"]  # nothing else disturbed


def test_over_max_ongoing_gets_503_with_retry_after(served):
    results = []
    threads = [_slow(served, results) for _ in range(3)]
    try:
        assert _wait_until(lambda: _in_progress(served) == 3)
        status, headers, raw = Client(served, api_key=KEY).request("POST", "/v1/images", b'{"prompt": "one more"}')
        assert status == 503 and int(headers["retry-after" if "retry-after" in headers else "Retry-After"]) >= 1
        assert "--max-ongoing 3" in json.loads(raw)["error"]["message"]
    finally:
        for t in threads:
            t.join()
    assert [r[0] for r in results] == [200, 200, 200]  # the accepted ones were served


def test_past_its_deadline_a_request_gets_504_and_its_work_stops(served):
    client = Client(served, api_key=KEY)
    started = time.time()
    status, _, raw = client.request("POST", "/v1/images", json.dumps(
        {"prompt": "too slow", "n": 4, "steps": 900, "deadline_s": 0.5}).encode())
    assert status == 504 and json.loads(raw)["error"]["field"] == "deadline_s"
    assert time.time() - started < 5
    # the replica is free again soon: a quick request is not stuck behind 4 x 900 steps
    quick = time.time()
    assert client.generate(prompt="quick", seed=0)["images"] and time.time() - quick < 5


def test_concurrent_requests_share_unet_calls_and_keep_their_images(served, sd_export):
    from diffprune.runtime import Pipeline

    busy, results = [], [None, None]
    blocker = _slow(served, busy, steps=40)  # while it runs, the next two queue into one batch
    assert _wait_until(lambda: _in_progress(served) == 1)
    bodies = [{"prompt": "a red square", "n": 2, "seed": 21, "steps": 3},
              {"prompts": ["a blue circle"], "seed": 22, "steps": 3}]

    def send(i):
        results[i] = Client(served, api_key=KEY).generate(**bodies[i])

    senders = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in senders:
        t.start()
    for t in senders + [blocker]:
        t.join()
    assert [r["timings"]["batch_requests"] for r in results] == [2, 2]
    assert results[0]["timings"]["batch_images"] == 3
    with Pipeline(sd_export, "ort-cpu", threads=1) as pipe:
        for result in results:
            alone = pipe.generate(result["config"]["prompts"], steps=3, seed=result["config"]["seed"])
            assert np.array_equal(decode_images(result), alone)


def test_loadtest_writes_its_report_within_its_bounds(served, tmp_path, capsys):
    from diffprune.cli import main

    out = tmp_path / "load"
    started = time.time()
    assert main(["loadtest", served, "--api-key", KEY, "--prompt", "a digit", "--concurrency", "1,2", "--rate", "20",
                 "--duration", "1", "--max-requests", "6", "--out", str(out)]) == 0
    assert time.time() - started < 20
    report = json.loads((out / "loadtest.json").read_text())
    closed1, closed2, open20 = report["levels"]
    assert (closed1["mode"], closed2["mode"], open20["mode"]) == ("closed", "closed", "open")
    assert all(lv["requests"] <= 6 and lv["ok"] + sum(lv["errors"].values()) == lv["requests"] for lv in report["levels"])
    assert closed1["ok"] == closed1["requests"] and closed1["p50_s"] > 0 and closed1["throughput_rps"] > 0
    assert set(open20["errors"]) <= {"503"}  # 20/s at a 3-request limit: the excess is refused, counted by kind
    assert report["served"]["kind"] == "pipeline" and report["machine"]["cpu"]
    assert len(report["records"]) == sum(lv["requests"] for lv in report["levels"])
    assert "| closed, concurrency 2 |" in (out / "loadtest.md").read_text()
    assert (out / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["loadtest", served, "--api-key", KEY, "--prompt", "a", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err  # never overwritten without --overwrite


def test_a_slow_client_does_not_hold_up_the_others(served):
    """A client that sends its headers and half its body, then stalls, costs a connection, not the service."""
    from urllib.parse import urlparse

    address = urlparse(served)
    first, rest = b'{"prompt": ', b'"late", "seed": 1}'
    with socket.create_connection((address.hostname, address.port), timeout=10) as slow:
        slow.sendall(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(first + rest) + first)
        started = time.time()
        assert Client(served, api_key=KEY).generate(prompt="meanwhile", seed=2)["images"]
        assert time.time() - started < 10
        slow.sendall(rest)  # the rest of its body, late: it is still answered
        assert slow.recv(12).startswith(b"HTTP/1.1 200")


def test_a_replica_killed_with_sigkill_is_replaced(served):
    from ray import serve

    handle = serve.get_deployment_handle("model", app_name="sd")
    pid = handle.info.remote().result()["pid"]
    os.kill(pid, signal.SIGKILL)
    client = Client(served, api_key=KEY)
    statuses = []

    def served_again():
        status = client.request("POST", "/v1/images", b'{"prompt": "after the crash"}')[0]
        statuses.append(status)
        return status == 200 and handle.info.remote().result()["pid"] != pid

    assert _wait_until(served_again, timeout=60)
    assert set(statuses) <= {200, 503}  # while it is down: 503 with Retry-After, never a hang or a 500
    assert _wait_until(lambda: client.request("GET", "/readyz")[0] == 200, timeout=30)


def test_a_node_lost_under_load_with_malformed_requests_mixed_in(app):
    """Two replicas, one per node; the worker node is removed under load (1 request in 10 malformed), then a node
    is added back. Every request gets one answer within its deadline: 200, 422 for the malformed, or a 503/504
    that a retry fixes; none hangs; the replica count comes back."""
    import dataclasses

    from diffprune.serve.server import start

    url, cluster = app["url"], app["cluster"]
    start(dataclasses.replace(app["config"], replicas=2, max_replicas_per_node=1))
    client = Client(url, api_key=KEY, timeout=20)

    def replicas():
        return json.loads(client.request("GET", "/readyz")[2]).get("replicas_running")

    assert _wait_until(lambda: replicas() == 2, timeout=60)
    records, stop = [], threading.Event()

    def load(offset):
        i = offset
        while not stop.is_set():
            bad = i % 10 == 0
            body = b'{"prompt": 5}' if bad else json.dumps({"prompt": f"digit {i}", "seed": i, "deadline_s": 10}).encode()
            started = time.time()
            try:
                status = client.request("POST", "/v1/images", body)[0]
            except OSError as e:  # a timeout or a dropped connection: what must not happen
                status = type(e).__name__
            records.append((bad, status, time.time() - started))
            i += 2

    senders = [threading.Thread(target=load, args=(k,)) for k in (0, 1)]
    for t in senders:
        t.start()
    try:
        time.sleep(1.0)
        cluster.remove_node(app["worker"], allow_graceful=False)  # the node dies, its replica with it
        lost_at = time.time()
        time.sleep(3.0)
        app["worker"] = cluster.add_node(num_cpus=1)  # a machine comes back
        assert _wait_until(lambda: replicas() == 2, timeout=60)
        recovered_s = time.time() - lost_at
    finally:
        stop.set()
        for t in senders:
            t.join()
    statuses = [s for _, s, _ in records]
    print({s: statuses.count(s) for s in set(statuses)}, f"recovered in {recovered_s:.1f} s")
    assert all(s == 422 for bad, s, _ in records if bad), statuses
    assert set(statuses) <= {200, 422, 503, 504}, statuses  # no hang, no dropped connection, no 500
    assert statuses.count(200) > 0 and max(t for _, _, t in records) < 12
    assert recovered_s < 60


def test_stopping_drains_the_requests_in_progress(app):
    """The last test on the application: stopping it (as Ctrl-C / SIGTERM does) answers what is in progress."""
    from diffprune.serve.server import stop

    results = []
    slow = _slow(app["url"], results, steps=40)
    assert _wait_until(lambda: _in_progress(app["url"]) == 1)
    stop(app["config"])
    slow.join()
    assert results[0][0] == 200 and json.loads(results[0][2])["images"]
    with pytest.raises(OSError):  # and then nothing listens any more
        Client(app["url"], timeout=5).request("GET", "/healthz")


def test_serving_imports_no_torch():
    """The serve package runs on an inference host: Ray, numpy and the runtime, never torch nor the torch side."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name.startswith(("diffusers", "transformers")):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import diffprune.serve as s
        for m in pkgutil.walk_packages(s.__path__, "diffprune.serve."):
            importlib.import_module(m.name)
        import diffprune.cli.serve, diffprune.cli.loadtest
        from diffprune.cli import main
        bad = [k for k in sys.modules if k == "torch" or k.startswith(("torch.", "diffprune.export", "diffprune.models"))]
        assert not bad, bad
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
