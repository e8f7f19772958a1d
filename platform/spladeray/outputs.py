"""Where a job writes, and refusing places that do not last.

Under ``ray job submit --working-dir .`` the job's driver starts in Ray's unpacked copy of the
working directory, ``<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/``,
and a config's relative paths (``${SPLADERAY_RUNS:-runs}/...`` with ``SPLADERAY_RUNS`` unset)
resolve inside it. That copy is Ray's cache, not the user's: Ray deletes it once no job uses it
and the node's cache is full, a resubmitted checkout that changed unpacks into a new
``_ray_pkg_<hash>`` (so ``prepare`` starts over and ``train`` does not resume), and the workers
on the other nodes write into their own node's copy, which the driver never sees. So every job
checks, before any work, that none of its outputs (the ``*_outputs`` functions) lies in a copy
(:func:`check_outputs`), and ends with one line naming where its outputs are
(:func:`summary_line`). docs/cluster.md, "Where outputs go", says why it refuses rather than
warns.

A job run as ``python jobs/X.py`` from a checkout (``ray.address: null``: a single-node Ray of
its own) resolves its paths against the checkout, never inside such a copy, so the check never
fires there. Under ``ray job submit`` the job always joins a cluster (the job supervisor sets
``RAY_ADDRESS``), one node or many: the copy is Ray's cache either way, so it is refused there
on a one-node cluster too.

Detection is by path: a location with the components ``runtime_resources/working_dir_files/<pkg>``
(the layout of Ray's working_dir plugin, ``_ray_pkg_<hash>`` for an uploaded directory, another
name for a remote ``working_dir`` URI) is inside a copy. The path says it directly, whatever the
entrypoint's current directory; ``RAY_JOB_CONFIG_JSON_ENV_VAR`` (set by the job supervisor) only
makes the message say that the job runs under ``ray job submit``. A ``local://`` working dir
(used in place, not a copy Ray manages) has no such component and is left alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from spladeray import storage

RUNS_ENV = "SPLADERAY_RUNS"
"""The root every shipped config writes under (``${SPLADERAY_RUNS:-runs}``)."""

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in a submitted job's driver: the job's runtime env as JSON."""

WORKING_DIR_PARTS = ("runtime_resources", "working_dir_files")
"""Path components of Ray's unpacked working-dir copies: ``.../working_dir_files/<pkg>/``."""


@dataclass(frozen=True)
class Output:
    """One thing a job writes: a label for people, the config key that sets it, and where."""

    what: str  # "model", "checkpoints", "prepared data", ...
    key: str  # the config key (or flag) that sets it: "train.output_dir", "--output"
    location: str  # a local path (made absolute by check_outputs) or a URI (s3://, http://)
    local_only: bool = False  # the key takes a local path only (the embedded index)


class OutputLocationError(ValueError):
    """An output of the job would land in a place that does not outlast the job."""


def ray_working_dir_copy(location: str | os.PathLike, cwd: str | None = None) -> str | None:
    """The Ray working-dir copy (``.../runtime_resources/working_dir_files/<pkg>``) that holds
    the local path ``location`` (relative paths: against ``cwd``, default the current
    directory); ``None`` for any other path and for every URI."""
    location = os.fspath(location)
    if "://" in location and not location.startswith("file://"):
        return None
    path = os.path.abspath(os.path.join(cwd or os.getcwd(), location.removeprefix("file://")))
    parts = PurePath(path).parts
    for i in range(len(parts) - 2):
        if parts[i : i + 2] == WORKING_DIR_PARTS:
            return str(PurePath(*parts[: i + 3]))
    return None


def submitted_job(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is the driver of a job that ``ray job submit`` started with a
    working dir Ray unpacked (not a ``local://`` one it uses in place)."""
    env = os.environ if environ is None else environ
    try:
        runtime_env = json.loads(env.get(JOB_ENV) or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        return False
    working_dir = runtime_env.get("working_dir") or ""
    return bool(working_dir) and not working_dir.startswith("local://")


def absolute(location: str, cwd: str | None = None) -> str:
    """A local path made absolute (against ``cwd``); URIs as given."""
    if "://" in location and not location.startswith("file://"):
        return location
    return os.path.abspath(os.path.join(cwd or os.getcwd(), location.removeprefix("file://")))


def check_outputs(
    outputs: Iterable[Output],
    *,
    cwd: str | None = None,
    environ: Mapping[str, str] | None = None,
    example_command: str = "python jobs/train.py",
) -> list[Output]:
    """``outputs`` with local paths made absolute; raises :class:`OutputLocationError`, naming
    each offending key and what to set instead, when any lies in a Ray working-dir copy."""
    outputs = [Output(o.what, o.key, absolute(o.location, cwd), o.local_only) for o in outputs]
    bad = [(o, copy) for o in outputs if (copy := ray_working_dir_copy(o.location, cwd))]
    if not bad:
        return outputs
    copies = sorted({copy for _, copy in bad})
    uri_keys = [o.key for o, _ in bad if not o.local_only]
    how = "this job runs under `ray job submit` and " if submitted_job(environ) else ""
    lines = [
        f"refusing to start: {how}these outputs would be written inside Ray's unpacked copy of "
        f"the job's working directory ({', '.join(copies)}), which Ray may delete once the job "
        "ends, a resubmitted checkout does not reuse, and the workers on other nodes never see:",
        *(f"  {o.key}: {o.what} -> {o.location}" for o, _ in bad),
        f"Write them to a lasting place: set {RUNS_ENV} (the configs write under "
        f"${{{RUNS_ENV}:-runs}}) to object storage or to an absolute path every node shares, e.g.",
        "  ray job submit --working-dir . --runtime-env-json "
        f"""'{{"env_vars": {{"{RUNS_ENV}": "s3://my-bucket/spladeray/runs"}}}}' -- """
        f"{example_command}",
        f"  ({RUNS_ENV}=/mnt/shared/spladeray/runs works too)"
        + (
            f", or set the key itself, e.g. --set {uri_keys[0]}=s3://my-bucket/..."
            if uri_keys
            else ""
        ),
    ]
    if local := sorted({o.key for o, _ in bad if o.local_only}):
        lines.append(
            f"  {', '.join(local)} takes a local path only (no s3://): give an absolute one on "
            f"a disk the job's node keeps, e.g. --set {local[0]}=/mnt/shared/spladeray/index"
        )
    raise OutputLocationError("\n".join(lines))


def summary_line(job: str, outputs: Iterable[Output], *, skip: Iterable[str] = ()) -> str:
    """``[train] wrote: model s3://..., checkpoints ..., tensorboard ...``: the lasting
    locations, in the order given, each once; ``skip`` drops labels the run did not write."""
    skip = set(skip)
    seen: list[str] = []
    for o in outputs:
        item = f"{o.what} {o.location}"
        if o.what not in skip and item not in seen:
            seen.append(item)
    return f"[{job}] wrote: " + (", ".join(seen) if seen else "nothing")


# What each job writes, read from its config (the paths the library derives, not new settings).


def prepare_outputs(prepare) -> list[Output]:
    """Prepared data; the work files (``<output_dir>/_work``) live under it while it runs."""
    return [Output("prepared data", "prepare.output_dir", str(prepare.output_dir))]


def train_outputs(cfg, *, prepare: bool = True) -> list[Output]:
    """Checkpoints, the model, TensorBoard and MLflow of ``cfg.train`` (and the prepared data
    when ``prepare`` and the config's prepare stage writes ``train.data_dir``)."""
    from spladeray.train.trainer import prepares_train_data, run_name

    tc, name = cfg.train, run_name(cfg)
    out: list[Output] = []
    if prepare and prepares_train_data(cfg):
        out += prepare_outputs(cfg.prepare)
    out.append(Output("model", "train.output_dir", storage.join(tc.output_dir, name, "model")))
    key = "train.storage_path" if tc.storage_path else "train.output_dir"
    out.append(Output("checkpoints", key, storage.join(tc.checkpoint_root, name)))
    if tc.tensorboard:
        tb = storage.join(tc.output_dir, name, "tensorboard")
        out.append(Output("tensorboard", "train.output_dir", tb))
    if tc.mlflow is not None:
        out += mlflow_outputs(tc.mlflow.tracking_uri)
    return out


def mlflow_outputs(tracking_uri: str) -> list[Output]:
    """Where MLflow keeps runs and artifacts for ``tracking_uri``: a server (``http(s)://``,
    ``databricks``) keeps them itself; a ``file:`` store or a plain path holds the artifacts
    under it; a database store (``sqlite:///x.db``) keeps artifacts in ``./mlruns`` of the
    logging process (MLflow's default artifact root), i.e. the job's working directory."""
    key = "train.mlflow.tracking_uri"
    scheme = tracking_uri.split(":", 1)[0] if ":" in tracking_uri else ""
    if scheme in ("", "file"):
        return [Output("mlflow", key, tracking_uri.removeprefix("file://").removeprefix("file:"))]
    if scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        out = [Output("mlflow artifacts", key, "mlruns")]
        if scheme == "sqlite":
            out.insert(0, Output("mlflow", key, tracking_uri.split(":///", 1)[-1]))
        return out
    return [Output("mlflow", key, tracking_uri)]


def export_outputs(cfg, *, hf_output: str | None = None, hf: bool = False) -> list[Output]:
    """ML Commons zips under ``export.output_dir``, or (``hf``) the Hub-ready directory."""
    from spladeray.config import ExportConfig

    root = str((cfg.export or ExportConfig()).output_dir)
    if hf:
        if hf_output:
            return [Output("hf directory", "--output", hf_output)]
        return [Output("hf directory", "export.output_dir", storage.join(root, "hf"))]
    return [Output("ML Commons zips", "export.output_dir", root)]


def index_outputs(cfg, name: str | None = None) -> list[Output]:
    """The embedded index's folder (``index.path``); an OpenSearch index lives on the cluster
    (its first host, any ``user:password@`` left out; opensearch-py's ``http://`` when the host
    names no scheme)."""
    name = name or cfg.index.name
    if cfg.index.backend == "local":
        return [Output(f"index {name!r}", "index.path", str(cfg.index.path), local_only=True)]
    host = cfg.index.opensearch.hosts[0]
    host = re.sub(r"^(\w+://)[^/@]*@", r"\1", host if "://" in host else f"http://{host}")
    host = host.rstrip("/")
    return [Output(f"index {name!r}", "index.opensearch.hosts", f"{host}/{name}")]


def evaluate_outputs(cfg) -> list[Output]:
    """The reports and run files (``evaluate.output_dir``, its default without the section)."""
    from spladeray.config import EvaluateConfig

    root = str((cfg.evaluate or EvaluateConfig()).output_dir)
    return [Output("reports", "evaluate.output_dir", root)]


def sweep_outputs(variants: list[tuple[str, Any, Any]], sweep_name: str) -> list[Output]:
    """Each variant's training outputs (no exported model) and ``<output_dir>/<sweep>/``: the
    report and Ray Tune's experiment folder ``<sweep>/tune`` (:mod:`spladeray.train.sweep_tune`)."""
    out: list[Output] = []
    for _, _, cfg in variants:
        out += [o for o in train_outputs(cfg) if o.what != "model"]
    first = variants[0][2].train.output_dir
    out.append(Output("sweep report", "train.output_dir", storage.join(first, sweep_name)))
    return out


def demo_outputs(cfg, *, full: bool) -> list[Output]:
    """The demo's stages: prepare, train, export (``export.output_dir``, else ``export`` beside
    ``train.output_dir``), the fine-tuned model's index and the evaluation (``full``); the
    search-only demo writes the index alone."""
    if not full:
        return index_outputs(cfg)
    from spladeray.config import ExportConfig

    export = cfg.export or ExportConfig(
        output_dir=os.path.join(os.path.dirname(str(cfg.train.output_dir).rstrip("/")), "export")
    )
    return [
        *prepare_outputs(cfg.prepare),
        *train_outputs(cfg, prepare=False),
        *export_outputs(cfg.model_copy(update={"export": export})),
        *index_outputs(cfg, f"{cfg.index.name}-finetuned"),
        *evaluate_outputs(cfg),
    ]
