"""The OpenSearch ML Commons model lifecycle, as users do it by hand today, in one client.

Cluster settings -> model group -> register (from a URL, or chunked upload of the local zip)
-> poll the task -> deploy -> poll -> predict -> undeploy -> delete. It talks to the REST API
through opensearch-py's low-level transport (``client.transport.perform_request``), so it works
with whatever authentication the client was built with (basic auth, SigV4) and never sees or
logs a credential.

Idempotent where the API allows:

- a model group is looked up by exact name before it is registered;
- a model is looked up by name + ``model_content_hash_value`` in its group before it is
  registered again (same zip, same model id);
- deploying a ``DEPLOYED`` model, undeploying an undeployed one and deleting a missing one are
  no-ops.

Every failure is an :class:`MLCommonsError` naming the step and carrying ML Commons' own error
text (a failed task's ``error`` field, or the REST error's ``reason``); URLs in messages have
their query strings and user info redacted (presigned model URLs carry credentials).

:func:`run_export` is the export stage (``jobs/export.py``): the zips of
:func:`spladeray.model.export.export_from_config`, then, when asked, register + deploy each of
them on the config's OpenSearch (:func:`register_exported`).

REST paths and bodies follow the ML Commons documentation (``/_plugins/_ml/...``); chunked upload
is ``POST /_plugins/_ml/models/meta`` then ``POST /_plugins/_ml/models/<id>/chunk/<n>`` (the
protocol opensearch-py-ml uses).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from spladeray.config import Config
    from spladeray.model.export import ExportResult

logger = logging.getLogger(__name__)

ML = "/_plugins/_ml"
DEFAULT_CHUNK_BYTES = 10_000_000

TASK_DONE = {"COMPLETED"}
TASK_FAILED = {"FAILED", "CANCELLED", "COMPLETED_WITH_ERROR"}
MODEL_DEPLOYED = {"DEPLOYED"}
MODEL_LOADED = {"DEPLOYED", "PARTIALLY_DEPLOYED", "DEPLOYING"}
MODEL_REGISTERED = {"REGISTERED", "DEPLOYED", "PARTIALLY_DEPLOYED", "DEPLOYING", "UNDEPLOYED"}

# Settings a small cluster without dedicated ML nodes needs for local models (docs/production.md).
SMALL_CLUSTER_SETTINGS = {
    "plugins.ml_commons.only_run_on_ml_node": False,
    "plugins.ml_commons.native_memory_threshold": 99,
}


class MLCommonsError(RuntimeError):
    """An ML Commons step failed; ``step`` names it, ``detail`` is ML Commons' own text."""

    def __init__(
        self,
        step: str,
        detail: str,
        *,
        status: int | None = None,
        task: Mapping[str, Any] | None = None,
    ) -> None:
        self.step = step
        self.detail = redact(detail)
        self.status = status
        self.task = dict(task) if task is not None else None
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"ML Commons {step} failed{where}: {self.detail}")


class MLCommonsTimeout(MLCommonsError):
    """A task or model did not reach a final state in time."""


_URL_RE = re.compile(r"\b(https?|s3|gs)://[^\s\"'<>]+")


def redact_url(url: str) -> str:
    """``url`` without user info and with every query value replaced by ``REDACTED``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(
        f"{kv.split('=', 1)[0]}=REDACTED" if "=" in kv else kv
        for kv in parts.query.split("&")
        if kv
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact(text: str) -> str:
    """Redact every URL inside a message (see :func:`redact_url`)."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), str(text))


@dataclass
class Deployed:
    """The outcome of :meth:`MLCommonsClient.register_and_deploy`."""

    model_id: str
    model_group_id: str
    state: str
    reused: bool


@dataclass
class RegisteredModel:
    """One exported zip after :func:`register_exported`: where it is in ML Commons, and the
    vector ML Commons computed for the ``predict`` text (when one was given and it deployed)."""

    function_name: str
    deployed: Deployed
    prediction: dict[str, float] | None = None

    def summary(self, top_tokens: int = 10) -> dict[str, Any]:
        out: dict[str, Any] = {"function_name": self.function_name, **asdict(self.deployed)}
        if self.prediction is not None:
            out["top_tokens"] = sorted(self.prediction.items(), key=lambda kv: -kv[1])[:top_tokens]
        return out


class MLCommonsClient:
    """ML Commons over an ``opensearchpy.OpenSearch`` client's transport.

    Args:
        client: an ``opensearchpy.OpenSearch`` (or anything with ``transport.perform_request``).
        poll_interval_s: pause between task / model polls.
        sleep, clock: injectable for tests.
    """

    def __init__(
        self,
        client: Any,
        *,
        poll_interval_s: float = 2.0,
        request_timeout_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.request_timeout_s = request_timeout_s
        self._sleep = sleep
        self._clock = clock

    # ------------------------------------------------------------------ transport
    def request(
        self,
        step: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        ignore_status: Iterable[int] = (),
    ) -> dict[str, Any]:
        """One REST call; errors become :class:`MLCommonsError` with ML Commons' reason."""
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import TransportError

        ignore = tuple(ignore_status)
        try:
            result = self.client.transport.perform_request(
                method,
                path,
                params=dict(params or {}),
                body=body,
                timeout=self.request_timeout_s,
            )
        except OSConnectionError as exc:
            raise MLCommonsError(step, f"cannot reach OpenSearch: {type(exc).__name__}") from None
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else None
            if status in ignore:
                return {"_status": status, **_as_dict(exc.info)}
            raise MLCommonsError(step, _error_reason(exc.info, exc.error), status=status) from None
        if isinstance(result, bytes | str):
            try:
                result = json.loads(result) if result else {}
            except ValueError:
                result = {
                    "raw": result if isinstance(result, str) else result.decode(errors="replace")
                }
        return result if isinstance(result, dict) else {"result": result}

    # ------------------------------------------------------------------ settings / groups
    def apply_cluster_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT _cluster/settings`` with ``persistent`` settings (idempotent by nature)."""
        if not settings:
            return {}
        return self.request(
            "cluster settings", "PUT", "/_cluster/settings", {"persistent": dict(settings)}
        )

    def find_model_group(self, name: str) -> str | None:
        """The id of the model group named exactly ``name``, or None."""
        res = self.request(
            "search model groups",
            "POST",
            f"{ML}/model_groups/_search",
            {"query": {"match_phrase": {"name": name}}, "size": 100},
            ignore_status=(404,),
        )
        for hit in _hits(res):
            if hit.get("_source", {}).get("name") == name:
                return hit["_id"]
        return None

    def ensure_model_group(
        self, name: str, description: str = "", access_mode: str | None = None
    ) -> str:
        """Find or register the model group ``name``; returns its id."""
        found = self.find_model_group(name)
        if found:
            logger.info("model group %r exists: %s", name, found)
            return found
        body: dict[str, Any] = {"name": name, "description": description}
        if access_mode:
            body["access_mode"] = access_mode
        try:
            res = self.request("register model group", "POST", f"{ML}/model_groups/_register", body)
        except MLCommonsError as exc:  # a concurrent registration won the name
            if exc.status == 400 and "already" in exc.detail.lower():
                again = self.find_model_group(name)
                if again:
                    return again
            raise
        group_id = res.get("model_group_id")
        if not group_id:
            raise MLCommonsError("register model group", f"no model_group_id in {res!r}")
        logger.info("registered model group %r: %s", name, group_id)
        return group_id

    def delete_model_group(self, group_id: str) -> bool:
        """Delete a model group; False when it did not exist."""
        res = self.request(
            "delete model group",
            "DELETE",
            f"{ML}/model_groups/{group_id}",
            ignore_status=(404,),
        )
        return res.get("_status") != 404

    # ------------------------------------------------------------------ models
    def get_model(self, model_id: str) -> dict[str, Any]:
        return self.request("get model", "GET", f"{ML}/models/{model_id}")

    def find_model(
        self, name: str, content_hash: str, model_group_id: str | None = None
    ) -> dict[str, Any] | None:
        """A registered model with this name and zip hash (in the group), or None.

        Returns the model's ``_source`` with ``model_id`` added; failed registrations are skipped.
        """
        must: list[dict[str, Any]] = [{"term": {"model_content_hash_value": content_hash}}]
        if model_group_id:
            must.append({"term": {"model_group_id": model_group_id}})
        res = self.request(
            "search models",
            "POST",
            f"{ML}/models/_search",
            {"query": {"bool": {"must": must}}, "size": 100},
            ignore_status=(404,),
        )
        for hit in _hits(res):
            src = hit.get("_source", {})
            if "chunk_number" in src or src.get("name") != name:
                continue
            if src.get("model_state") not in MODEL_REGISTERED:
                continue
            return {**src, "model_id": hit["_id"]}
        return None

    def register_from_url(self, body: Mapping[str, Any], *, timeout_s: float = 900.0) -> str:
        """``POST models/_register`` with ``url``; waits for the task; returns the model id.

        The cluster downloads the zip itself (``plugins.ml_commons.allow_registering_model_via_url``
        must be true) and checks ``model_content_hash_value`` against it.
        """
        if not body.get("url"):
            raise ValueError("register_from_url needs a body with 'url'")
        res = self.request("register model", "POST", f"{ML}/models/_register", dict(body))
        task_id = res.get("task_id")
        if not task_id:
            raise MLCommonsError("register model", f"no task_id in response {res!r}")
        task = self.wait_for_task(task_id, timeout_s=timeout_s, step="register model")
        model_id = task.get("model_id") or res.get("model_id")
        if not model_id:
            raise MLCommonsError("register model", "task completed without a model_id", task=task)
        return model_id

    def upload_zip(
        self,
        zip_path: str | os.PathLike[str],
        body: Mapping[str, Any],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float = 900.0,
    ) -> str:
        """Register the local zip by chunked upload; returns the model id once REGISTERED."""
        path = Path(zip_path)
        size = path.stat().st_size
        total = max(1, math.ceil(size / chunk_bytes))
        meta = {k: v for k, v in body.items() if k != "url"}
        meta["model_content_size_in_bytes"] = size
        meta["total_chunks"] = total
        res = self.request("upload model meta", "POST", f"{ML}/models/meta", meta)
        model_id = res.get("model_id")
        if not model_id:
            raise MLCommonsError("upload model meta", f"no model_id in response {res!r}")
        with open(path, "rb") as f:
            for number in range(total):
                chunk = f.read(chunk_bytes)
                self.request(
                    f"upload chunk {number + 1}/{total}",
                    "POST",
                    f"{ML}/models/{model_id}/chunk/{number}",
                    chunk,
                )
                logger.info("uploaded chunk %d/%d of %s", number + 1, total, path.name)
        self.wait_for_model(
            model_id, MODEL_REGISTERED, timeout_s=timeout_s, step="register model (upload)"
        )
        return model_id

    def register(
        self,
        body: Mapping[str, Any],
        *,
        zip_path: str | os.PathLike[str] | None = None,
        model_group_id: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float = 900.0,
    ) -> tuple[str, bool]:
        """Register once: reuse a model with the same name + hash; else URL or upload.

        Returns ``(model_id, reused)``. With ``body["url"]`` the cluster downloads the zip,
        otherwise ``zip_path`` is uploaded in chunks.
        """
        body = dict(body)
        if model_group_id:
            body["model_group_id"] = model_group_id
        existing = self.find_model(
            body["name"], body["model_content_hash_value"], body.get("model_group_id")
        )
        if existing is not None:
            logger.info(
                "model %r with this zip is already registered: %s (%s)",
                body["name"],
                existing["model_id"],
                existing.get("model_state"),
            )
            return existing["model_id"], True
        if body.get("url"):
            return self.register_from_url(body, timeout_s=timeout_s), False
        if zip_path is None:
            raise ValueError("register needs body['url'] or zip_path")
        return self.upload_zip(zip_path, body, chunk_bytes=chunk_bytes, timeout_s=timeout_s), False

    def deploy(self, model_id: str, *, timeout_s: float = 900.0) -> dict[str, Any]:
        """Deploy and wait; a model already ``DEPLOYED`` is left as it is."""
        model = self.get_model(model_id)
        if model.get("model_state") in MODEL_DEPLOYED:
            logger.info("model %s is already deployed", model_id)
            return model
        res = self.request("deploy model", "POST", f"{ML}/models/{model_id}/_deploy")
        task_id = res.get("task_id")
        if task_id:
            self.wait_for_task(task_id, timeout_s=timeout_s, step="deploy model")
        return self.wait_for_model(
            model_id, MODEL_DEPLOYED, timeout_s=timeout_s, step="deploy model"
        )

    def undeploy(self, model_id: str) -> dict[str, Any]:
        """Undeploy from every node (a no-op for a model that is not deployed)."""
        return self.request("undeploy model", "POST", f"{ML}/models/{model_id}/_undeploy")

    def delete_model(self, model_id: str) -> bool:
        """Undeploy if needed, then delete; False when the model did not exist."""
        res = self.request("get model", "GET", f"{ML}/models/{model_id}", ignore_status=(404,))
        if res.get("_status") == 404:
            return False
        if res.get("model_state") in MODEL_LOADED:
            self.undeploy(model_id)
        res = self.request(
            "delete model", "DELETE", f"{ML}/models/{model_id}", ignore_status=(404,)
        )
        return res.get("_status") != 404

    def predict_sparse(
        self, model_id: str, texts: list[str], *, algorithm: str = "sparse_encoding"
    ) -> list[dict[str, float]]:
        """``_predict/<algorithm>`` (``sparse_encoding`` or ``sparse_tokenize``): one
        ``{token: weight}`` per text."""
        res = self.request(
            "predict",
            "POST",
            f"{ML}/_predict/{algorithm}/{model_id}",
            {"text_docs": list(texts)},
        )
        return parse_sparse_predictions(res)

    # ------------------------------------------------------------------ polling
    def get_task(self, task_id: str) -> dict[str, Any]:
        return self.request("get task", "GET", f"{ML}/tasks/{task_id}")

    def wait_for_task(
        self, task_id: str, *, timeout_s: float = 900.0, step: str = "task"
    ) -> dict[str, Any]:
        """Poll a task until COMPLETED (returned) or FAILED/CANCELLED (raised, with its error)."""
        deadline = self._clock() + timeout_s
        while True:
            task = self.get_task(task_id)
            state = task.get("state")
            if state in TASK_DONE:
                return task
            if state in TASK_FAILED:
                raise MLCommonsError(step, _task_error(task_id, task, state), task=task)
            if self._clock() >= deadline:
                raise MLCommonsTimeout(
                    step,
                    f"task {task_id} still {state} after {timeout_s:g}s",
                    task=task,
                )
            self._sleep(self.poll_interval_s)

    def wait_for_model(
        self,
        model_id: str,
        states: set[str],
        *,
        timeout_s: float = 900.0,
        step: str = "model",
    ) -> dict[str, Any]:
        """Poll a model until its ``model_state`` is one of ``states``; *_FAILED raises."""
        deadline = self._clock() + timeout_s
        while True:
            model = self.get_model(model_id)
            state = model.get("model_state")
            if state in states:
                return model
            if state in ("DEPLOY_FAILED", "REGISTER_FAILED"):
                raise MLCommonsError(step, f"model {model_id} is {state}")
            if self._clock() >= deadline:
                raise MLCommonsTimeout(step, f"model {model_id} still {state} after {timeout_s:g}s")
            self._sleep(self.poll_interval_s)

    # ------------------------------------------------------------------ the whole flow
    def register_and_deploy(
        self,
        body: Mapping[str, Any],
        *,
        zip_path: str | os.PathLike[str] | None = None,
        model_group: str = "spladeray",
        model_group_description: str = "",
        cluster_settings: Mapping[str, Any] | None = None,
        deploy: bool = True,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        register_timeout_s: float = 900.0,
        deploy_timeout_s: float = 900.0,
    ) -> Deployed:
        """Settings -> group -> register (reusing a same-hash model) -> deploy."""
        if cluster_settings:
            self.apply_cluster_settings(cluster_settings)
        group_id = self.ensure_model_group(model_group, model_group_description)
        model_id, reused = self.register(
            body,
            zip_path=zip_path,
            model_group_id=group_id,
            chunk_bytes=chunk_bytes,
            timeout_s=register_timeout_s,
        )
        state = "REGISTERED"
        if deploy:
            state = self.deploy(model_id, timeout_s=deploy_timeout_s).get("model_state", "DEPLOYED")
        return Deployed(model_id=model_id, model_group_id=group_id, state=state, reused=reused)


def parse_sparse_predictions(res: Mapping[str, Any]) -> list[dict[str, float]]:
    """``inference_results[i].output[0].dataAsMap.response[0]`` -> ``{token: weight}``."""
    out: list[dict[str, float]] = []
    for item in res.get("inference_results", []):
        outputs = item.get("output") or []
        if not outputs:
            raise MLCommonsError("predict", f"an inference result has no output: {item!r}")
        data = outputs[0].get("dataAsMap", {})
        response = data.get("response")
        vec = response[0] if isinstance(response, list) and response else data
        out.append({str(k): float(v) for k, v in vec.items()})
    return out


def _hits(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(res.get("hits", {}).get("hits", []) or [])


def _as_dict(info: Any) -> dict[str, Any]:
    if isinstance(info, dict):
        return info
    if isinstance(info, bytes | str):
        try:
            parsed = json.loads(info)
            return parsed if isinstance(parsed, dict) else {}
        except ValueError:
            return {}
    return {}


def _error_reason(info: Any, fallback: Any) -> str:
    """The most specific ``reason`` in an OpenSearch error body."""
    data = _as_dict(info)
    err = data.get("error", data)
    if isinstance(err, dict):
        causes = err.get("root_cause") or []
        reason = err.get("reason") or (causes[0].get("reason") if causes else None)
        kind = err.get("type")
        if reason:
            return f"{kind}: {reason}" if kind else str(reason)
    if isinstance(err, str) and err:
        return err
    if isinstance(info, str) and info:
        return info[:500]
    return str(fallback)


def _task_error(task_id: str, task: Mapping[str, Any], state: str) -> str:
    """A failed task's ``error`` (for deploys a JSON map node id -> error, flattened)."""
    error = task.get("error")
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            error = "; ".join(f"{node}: {msg}" for node, msg in parsed.items())
    elif isinstance(error, dict):
        error = "; ".join(f"{node}: {msg}" for node, msg in error.items())
    return f"task {task_id} {state}: {error or 'no error text'}"


# ---------------------------------------------------------------------- the export stage
def register_exported(
    cfg: Config, result: ExportResult, *, deploy: bool = True, predict: str | None = None
) -> list[RegisteredModel]:
    """Register (and deploy) each zip of ``result`` in ML Commons on ``cfg.index.opensearch``.

    Settings, model group and timeouts come from ``cfg.export.ml_commons``; a zip with ``url``
    in its register body is downloaded by the cluster, any other is uploaded in chunks. Deploys
    when both ``deploy`` and ``export.ml_commons.deploy`` say so. A zip exported to a URI
    (``s3://...``) is uploaded from its local cached copy (:func:`spladeray.storage.local_copy`). With ``predict`` each deployed
    model encodes that text once (``sparse_encoding`` / ``sparse_tokenize``), as a smoke test.
    Credentials come from the environment (see :class:`spladeray.config.OpenSearchConfig`).
    """
    from spladeray import storage
    from spladeray.config import ExportConfig
    from spladeray.index.opensearch import build_client

    mc = (cfg.export or ExportConfig()).ml_commons
    client = MLCommonsClient(build_client(cfg.index.opensearch), poll_interval_s=mc.poll_interval_s)
    registered = []
    for exported in (result.encoder_zip, result.tokenizer_zip):
        if exported is None:
            continue
        body = exported.register_body
        deployed = client.register_and_deploy(
            body,
            zip_path=None if body.get("url") else storage.local_copy(exported.path),
            model_group=mc.model_group,
            model_group_description=mc.model_group_description,
            cluster_settings=mc.cluster_settings,
            deploy=mc.deploy and deploy,
            chunk_bytes=mc.chunk_bytes,
            register_timeout_s=mc.register_timeout_s,
            deploy_timeout_s=mc.deploy_timeout_s,
        )
        prediction = None
        if predict and deployed.state in MODEL_DEPLOYED:
            algorithm = exported.function_name.lower()
            prediction = client.predict_sparse(deployed.model_id, [predict], algorithm=algorithm)[0]
        registered.append(RegisteredModel(exported.function_name, deployed, prediction))
    return registered


def run_export(
    cfg: Config,
    *,
    url_prefix: str | None = None,
    register: bool = False,
    deploy: bool = True,
    predict: str | None = None,
    model_format: str | None = None,
) -> ExportResult:
    """The export stage: ``cfg.model`` as ML Commons zips (``cfg.export``, defaults when absent).

    ``url_prefix`` replaces ``export.url_prefix`` (where the zips will be served) and
    ``model_format`` (``TORCH_SCRIPT`` | ``ONNX``) replaces ``export.model_format``. With
    ``register`` the zips are then registered (and deployed) by :func:`register_exported`, and
    ``result.registered`` lists them. ``export.output_dir`` may be a URI (``s3://...``): it is
    checked for writing before the model is loaded, and the paths in the result are URIs.
    """
    from spladeray.model.export import export_from_config

    result = export_from_config(cfg, url_prefix=url_prefix, model_format=model_format)
    if register:
        result.registered = register_exported(cfg, result, deploy=deploy, predict=predict)
    return result
