"""The ML Commons lifecycle client against recorded ML Commons responses.

Why a replay and not a real cluster: ML Commons runs inside an OpenSearch JVM with the ml-commons
plugin and a DJL/PyTorch native runtime (hundreds of MB, downloaded on first deploy); this test
machine has no Docker, no JVM and no network beyond PyPI, and the OpenSearch-compatible test
server (osmem) does not implement ``/_plugins/_ml``. So an HTTP server on 127.0.0.1 replays the
exchanges in ``tests/data/mlcommons/*.json`` (shapes and error texts of real ML Commons
responses, see the README there) and checks that the client sends the right requests, in order,
through a real ``opensearchpy.OpenSearch`` client. ``test_real_cluster_round_trip`` runs the same
flow on a real cluster when ``OPENSEARCH_URL`` is set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opensearchpy import OpenSearch

from spladeray.mlcommons import (
    SMALL_CLUSTER_SETTINGS,
    MLCommonsClient,
    MLCommonsError,
    MLCommonsTimeout,
    redact,
)

from helpers import ROOT

DATA = ROOT / "tests" / "recorded" / "mlcommons"
SECRET = "s3cr3t-Pa55word"


class Replay:
    """Serves the recorded responses of one session in order; records what it received."""

    def __init__(self, name: str) -> None:
        recorded = json.loads((DATA / name).read_text())["exchanges"]
        self.queue: list[dict] = []
        for ex in recorded:
            self.queue += [ex] * int(ex.get("repeat", 1))
        self.received: list[dict] = []
        self.mismatches: list[str] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                replay.received.append(
                    {
                        "method": self.command,
                        "path": path,
                        "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                if not replay.queue:
                    replay.mismatches.append(f"unexpected {self.command} {path}")
                    status, payload = 500, {"error": "replay exhausted"}
                else:
                    ex = replay.queue.pop(0)
                    want = ex["request"]
                    if (want["method"], want["path"]) != (self.command, path):
                        replay.mismatches.append(
                            f"expected {want['method']} {want['path']}, got {self.command} {path}"
                        )
                    status, payload = ex["response"]["status"], ex["response"]["body"]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def json_body(self, i: int) -> dict:
        return json.loads(self.received[i]["body"])


@pytest.fixture
def replay(request):
    servers: list[Replay] = []

    def start(name: str) -> tuple[Replay, MLCommonsClient]:
        server = Replay(name)
        servers.append(server)
        client = OpenSearch(hosts=[server.url], http_auth=("admin", SECRET), max_retries=0)
        clock = {"t": 0.0}

        def sleep(seconds: float) -> None:  # no real waiting: advance a fake clock
            clock["t"] += seconds

        mc = MLCommonsClient(client, poll_interval_s=5.0, sleep=sleep, clock=lambda: clock["t"])
        return server, mc

    yield start
    for s in servers:
        s.close()


def fake_zip(tmp_path):
    """A 2,500-byte stand-in for a model zip and its ML Commons register body."""
    zip_path = tmp_path / "splade-tiny.zip"
    payload = os.urandom(2500)
    zip_path.write_bytes(payload)
    body = {
        "name": "splade-tiny",
        "version": "1.0.0",
        "model_format": "TORCH_SCRIPT",
        "function_name": "SPARSE_ENCODING",
        "model_content_hash_value": hashlib.sha256(payload).hexdigest(),
        "model_content_size_in_bytes": len(payload),
    }
    return zip_path, payload, body


def test_upload_deploy_predict_undeploy_delete(replay, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server, mc = replay("upload_deploy_predict.json")
    zip_path, payload, body = fake_zip(tmp_path)
    digest = body["model_content_hash_value"]
    deployed = mc.register_and_deploy(
        body,
        zip_path=zip_path,
        model_group="spladeray",
        model_group_description="spladeray sparse encoders",
        cluster_settings=SMALL_CLUSTER_SETTINGS,
        chunk_bytes=1000,
    )
    assert deployed.model_id == "t8qvDY4BChVAiNVEuo8q"
    assert deployed.model_group_id == "GDNmQ4gBYW0Qyy5ZcBcg"
    assert deployed.state == "DEPLOYED" and not deployed.reused

    vectors = mc.predict_sparse(deployed.model_id, ["today is sunny"])
    assert vectors[0]["sunny"] == pytest.approx(1.3086016)
    assert mc.delete_model(deployed.model_id) is True
    assert server.mismatches == [] and server.queue == []

    sent = {(r["method"], r["path"]): i for i, r in enumerate(server.received)}
    settings = server.json_body(sent[("PUT", "/_cluster/settings")])
    assert settings["persistent"]["plugins.ml_commons.only_run_on_ml_node"] is False
    group = server.json_body(sent[("POST", "/_plugins/_ml/model_groups/_register")])
    assert group == {"name": "spladeray", "description": "spladeray sparse encoders"}
    search = server.json_body(sent[("POST", "/_plugins/_ml/models/_search")])
    assert {"term": {"model_content_hash_value": digest}} in search["query"]["bool"]["must"]
    meta = server.json_body(sent[("POST", "/_plugins/_ml/models/meta")])
    assert meta["model_content_hash_value"] == digest
    assert meta["model_content_size_in_bytes"] == 2500 and meta["total_chunks"] == 3
    assert meta["model_group_id"] == "GDNmQ4gBYW0Qyy5ZcBcg"
    assert meta["function_name"] == "SPARSE_ENCODING" and "url" not in meta
    chunks = [r["body"] for r in server.received if "/chunk/" in r["path"]]
    assert b"".join(chunks) == payload and [len(c) for c in chunks] == [1000, 1000, 500]
    predict = server.json_body(
        sent[("POST", "/_plugins/_ml/_predict/sparse_encoding/t8qvDY4BChVAiNVEuo8q")]
    )
    assert predict == {"text_docs": ["today is sunny"]}
    # basic auth went over the wire, but never into a log line
    auth = "Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode()
    assert server.received[0]["headers"].get("authorization") == auth
    assert SECRET not in caplog.text and auth.split()[1] not in caplog.text


def test_register_from_url_failure_carries_the_task_error(replay):
    server, mc = replay("register_url_hash_mismatch.json")
    body = {
        "name": "splade-tiny",
        "version": "1.0.0",
        "model_format": "TORCH_SCRIPT",
        "function_name": "SPARSE_ENCODING",
        "model_content_hash_value": "0" * 64,
        "model_content_size_in_bytes": 123,
        "url": f"https://bucket.s3.amazonaws.com/m.zip?X-Amz-Credential=AKIA&X-Amz-Signature={SECRET}",
    }
    with pytest.raises(MLCommonsError) as err:
        mc.register_and_deploy(body, model_group="spladeray")
    assert "model content changed" in str(err.value)
    assert err.value.step == "register model"
    assert err.value.task["state"] == "FAILED"
    assert server.mismatches == [] and server.queue == []
    sent = json.loads(server.received[2]["body"])
    assert sent["url"] == body["url"]  # the cluster needs the real URL ...
    assert sent["model_group_id"] == "TRqZfYgBD7s2oEFdvrQj"  # exact name, not "spladeray-old"
    assert SECRET not in redact(f"could not fetch {body['url']}")  # ... messages never show it


def test_rerun_is_idempotent(replay):
    server, mc = replay("rerun_idempotent.json")
    body = {
        "name": "splade-tiny",
        "version": "1.0.0",
        "model_format": "TORCH_SCRIPT",
        "function_name": "SPARSE_ENCODING",
        "model_content_hash_value": "<hash>",
    }
    deployed = mc.register_and_deploy(body, zip_path=None, model_group="spladeray")
    assert deployed.reused and deployed.model_id == "t8qvDY4BChVAiNVEuo8q"
    assert deployed.state == "DEPLOYED"
    assert mc.delete_model("gone4Y4BChVAiNVEuo8q") is False
    assert server.mismatches == [] and server.queue == []
    paths = [r["path"] for r in server.received]
    assert not any(p.endswith(("/_register", "/meta", "/_deploy")) for p in paths)


def test_deploy_failure_and_rest_errors_carry_ml_commons_text(replay):
    server, mc = replay("deploy_failed.json")
    with pytest.raises(MLCommonsError) as err:
        mc.deploy("t8qvDY4BChVAiNVEuo8q")
    assert "Nq2ZZ2dRTgW-uGzlLHYUwA: Memory Circuit Breaker is open" in str(err.value)
    with pytest.raises(MLCommonsError) as err:
        mc.predict_sparse("t8qvDY4BChVAiNVEuo8q", ["x"])
    assert err.value.status == 400 and "Model not ready yet" in str(err.value)
    assert server.mismatches == [] and server.queue == []


def test_deploy_times_out(replay):
    server, mc = replay("deploy_timeout.json")
    with pytest.raises(MLCommonsTimeout, match="still RUNNING after 15s"):
        mc.deploy("t8qvDY4BChVAiNVEuo8q", timeout_s=15)
    assert server.mismatches == [] and server.queue == []


def test_unreachable_cluster_is_a_clear_error():
    client = OpenSearch(hosts=["http://127.0.0.1:9"], max_retries=0, timeout=2)
    with pytest.raises(MLCommonsError, match="cannot reach OpenSearch"):
        MLCommonsClient(client).get_model("x")


@pytest.mark.opensearch
@pytest.mark.skipif(not os.environ.get("OPENSEARCH_URL"), reason="set OPENSEARCH_URL to run")
def test_real_cluster_round_trip(splade_tiny, tmp_path):
    """Export splade-tiny, upload, deploy, predict, compare with the encoder, clean up.

    Needs ML Commons on the cluster; credentials from OPENSEARCH_USERNAME / OPENSEARCH_PASSWORD,
    OPENSEARCH_VERIFY_CERTS=false for a self-signed dev cluster.
    """
    from spladeray.config import OpenSearchConfig
    from spladeray.index.opensearch import build_client
    from spladeray.model import SpladeEncoder
    from spladeray.model.export import export_ml_commons

    cfg = OpenSearchConfig(
        hosts=[os.environ["OPENSEARCH_URL"]],
        verify_certs=os.environ.get("OPENSEARCH_VERIFY_CERTS", "true").lower() != "false",
    )
    encoder = SpladeEncoder.from_pretrained(str(splade_tiny))
    result = export_ml_commons(encoder, tmp_path, name=f"spladeray-test-{os.getpid()}")
    client = build_client(cfg)
    mc = MLCommonsClient(client, poll_interval_s=2.0)
    # the persistent settings this test changes are put back afterwards (a None resets a key)
    before = client.cluster.get_settings(flat_settings=True).get("persistent", {})
    restore = {"persistent": {k: before.get(k) for k in SMALL_CLUSTER_SETTINGS}}
    try:
        _round_trip(mc, encoder, result)
    finally:
        client.cluster.put_settings(body=restore)


def _round_trip(mc, encoder, result) -> None:
    deployed = mc.register_and_deploy(
        result.encoder_zip.register_body,
        zip_path=result.encoder_zip.path,
        model_group=f"spladeray-test-{os.getpid()}",
        cluster_settings=SMALL_CLUSTER_SETTINGS,
        register_timeout_s=300,
        deploy_timeout_s=300,
    )
    try:
        text = "sparse retrieval with learned term weights"
        got = mc.predict_sparse(deployed.model_id, [text])[0]
        want = encoder.encode_documents([text])[0]
        assert set(got) == set(want)
        for token, w in want.items():
            assert got[token] == pytest.approx(w, abs=1e-3)
    finally:
        mc.delete_model(deployed.model_id)
        mc.delete_model_group(deployed.model_group_id)


def test_register_exported_follows_the_config(replay, tmp_path):
    """The export stage's register step (``jobs/export.py --register --predict``): connection,
    settings, chunk size and polling come from the config; the prediction uses the zip's
    function name, and the result's summary lists what was registered."""
    from spladeray.config import parse_config
    from spladeray.mlcommons import register_exported
    from spladeray.model.export import ExportedZip, ExportResult

    server, _ = replay("upload_deploy_predict.json")
    zip_path, payload, body = fake_zip(tmp_path)
    digest = body["model_content_hash_value"]
    result = ExportResult(
        encoder_zip=ExportedZip(
            path=zip_path,
            function_name="SPARSE_ENCODING",
            sha256=digest,
            size_bytes=len(payload),
            register_body=body,
            register_body_path=tmp_path / "register-splade-tiny.json",
        )
    )
    opensearch = {"hosts": [server.url], "username_env": None, "password_env": None}
    ml_commons = {
        "cluster_settings": SMALL_CLUSTER_SETTINGS,
        "chunk_bytes": 1000,
        "poll_interval_s": 0.01,
    }
    cfg = parse_config(
        {
            "model": {"path": "m"},
            "index": {"backend": "opensearch", "opensearch": opensearch},
            "export": {"ml_commons": ml_commons},
        }
    )
    result.registered = register_exported(cfg, result, predict="today is sunny")
    assert server.mismatches == []
    (registered,) = result.registered
    assert registered.deployed.model_id == "t8qvDY4BChVAiNVEuo8q"
    assert registered.deployed.state == "DEPLOYED"
    assert registered.prediction["sunny"] == pytest.approx(1.3086016)
    chunks = [r["body"] for r in server.received if "/chunk/" in r["path"]]
    assert b"".join(chunks) == payload and len(chunks) == 3
    (summary,) = result.summary()["ml_commons"]
    assert summary["function_name"] == "SPARSE_ENCODING"
    assert summary["model_id"] == "t8qvDY4BChVAiNVEuo8q" and not summary["reused"]
    assert dict(summary["top_tokens"])["sunny"] == pytest.approx(1.3086016)
