"""The configuration schema: one pydantic model per YAML section, and ``load_config(path)``.

Every model forbids unknown keys, so a typo fails at load time with the dotted key and the file
named. String values may use ``${VAR}`` and ``${VAR:-default}``; they are expanded from the
environment when the file is loaded (never on import). Relative paths are resolved against the
project root: the nearest parent of the config file that holds ``pyproject.toml`` (else the
current directory), so ``../shared/assets`` means the same thing from any working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = Path(os.path.expanduser(str(value)))
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return Path(os.path.normpath(value))


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
"""A filesystem path; relative values are resolved against the project root at load time."""


def _is_uri(value: str) -> bool:
    return "://" in value and not value.startswith("file://")


def _resolve_uri(value: str, info: ValidationInfo) -> str:
    """A URI (``s3://``, ``gs://``) is kept; a local path is resolved like :data:`ConfigPath`."""
    if not value.strip():
        raise ValueError("an empty path (an unset ${VAR:-}?): give a path or a URI")
    if _is_uri(value):
        return value
    return str(_resolve_path(Path(value.removeprefix("file://")), info))


def _path_as_str(value: Any) -> Any:
    """A ``pathlib.Path`` given in code (not YAML) for a :data:`StorageURI` field, as a string."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


StorageURI = Annotated[str, BeforeValidator(_path_as_str), AfterValidator(_resolve_uri)]
"""A local path (resolved like :data:`ConfigPath`) or an object-store URI (``s3://bucket/x``),
read and written through :mod:`spladeray.storage`."""


def _resolve_model_ref(value: str, info: ValidationInfo) -> str:
    """A local model path is resolved like :data:`ConfigPath`; a hub id (``org/name``) and a URI
    (``s3://bucket/model``, fetched to a local cache when loaded) are kept."""
    if _is_uri(value):
        return value
    base = (info.context or {}).get("base_dir")
    looks_local = value.startswith((".", "/", "~")) or value.count("/") != 1
    if base is not None and (looks_local or (Path(base) / value).exists()):
        return str(_resolve_path(Path(value), info))
    return value


ModelRef = Annotated[str, AfterValidator(_resolve_model_ref)]
"""A model directory (resolved like a path) or a Hugging Face hub id (kept as given)."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(Section):
    """How to load and run a :class:`spladeray.model.SpladeEncoder`."""

    path: ModelRef = Field(description="local directory or Hugging Face hub id of the model")
    pooling: Literal["max", "sum"] | None = Field(
        None, description="None keeps what the model directory says (max for plain MLMs)"
    )
    max_query_length: int = Field(64, gt=0, le=8192)
    max_document_length: int = Field(256, gt=0, le=8192)
    document_stride: int | None = Field(
        None,
        ge=0,
        description="None truncates documents at max_document_length (the default); an int "
        "encodes long documents as windows of max_document_length tokens, consecutive windows "
        "sharing this many tokens, and max-pools the windows' vectors (exact SPLADE-max over "
        "the windows; docs/evaluate.md 'Long documents')",
    )
    top_k: int | None = Field(None, gt=0, description="keep only the k largest weights per vector")
    threshold: float = Field(0.0, ge=0.0, description="drop weights <= threshold")
    doc_only: bool | None = Field(
        None,
        description="inference-free mode: queries are weighted by idf.json, not the model; "
        "None keeps what the model directory says",
    )
    idf_path: ConfigPath | None = Field(None, description="idf.json for doc-only query encoding")
    allow_random_head: bool = Field(
        False, description="allow indexing/serving a model whose projection head is random"
    )
    batch_size: int = Field(32, gt=0)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="precision of bulk encoding (weights stay fp32). auto = bfloat16 on a CPU "
        "with native bf16 and on CUDA, float32 elsewhere (spladeray.model.precision); the "
        "shipped configs set auto, an unset value is float32 (exact, as sentence-transformers)",
    )
    trust_remote_code: bool = Field(
        False,
        description="allow a model whose config or tokenizer names Python code of its own "
        "(auto_map, e.g. ltg/norbert3); that code runs in every process that loads the model",
    )

    @model_validator(mode="after")
    def _stride_below_window(self) -> ModelConfig:
        if self.document_stride is not None and self.document_stride >= self.max_document_length:
            raise ValueError(
                f"model.document_stride ({self.document_stride}) must be smaller than "
                f"model.max_document_length ({self.max_document_length})"
            )
        return self


class RayConfig(Section):
    """Where Ray runs: ``address: null`` starts a local cluster, ``auto`` joins a running one.

    ``num_cpus``, ``num_gpus`` and the dashboard settings apply only to a cluster a job starts
    itself; a job that joins a running cluster uses that cluster's dashboard.
    """

    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    num_gpus: int | None = Field(None, ge=0)
    include_dashboard: bool = Field(
        True, description="start the Ray dashboard with a local cluster (the job prints its URL)"
    )
    dashboard_host: str = Field(
        "127.0.0.1", description="interface the dashboard binds to; 0.0.0.0 exposes it"
    )


class OpenSearchConfig(Section):
    """Connection and index settings for the OpenSearch backend.

    Secrets never live here: ``username_env`` / ``password_env`` (basic auth) and the
    ``aws_*_env`` keys (SigV4) name environment variables that are read when connecting.
    """

    hosts: list[str] = Field(default_factory=lambda: ["https://localhost:9200"])
    verify_certs: bool = Field(True, description="TLS verification; turning it off logs a warning")
    ca_certs: ConfigPath | None = None
    username_env: str | None = "OPENSEARCH_USERNAME"
    password_env: str | None = "OPENSEARCH_PASSWORD"
    aws_sigv4: bool = False
    aws_region: str | None = None
    aws_service: Literal["es", "aoss"] = "es"
    aws_access_key_env: str = "AWS_ACCESS_KEY_ID"
    aws_secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    aws_session_token_env: str | None = "AWS_SESSION_TOKEN"
    timeout_s: float = Field(30.0, gt=0)
    query_type: Literal["rank_feature", "neural_sparse"] = "rank_feature"
    field_type: Literal["rank_features", "sparse_vector"] = "rank_features"
    vector_field: str = Field("sparse", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    index_settings: dict[str, Any] = Field(default_factory=dict)
    sparse_vector_method: dict[str, Any] = Field(
        default_factory=lambda: {"name": "seismic", "parameters": {}},
        description="method of a sparse_vector field (OpenSearch 3.3+ SEISMIC)",
    )
    neural_sparse_method_parameters: dict[str, Any] = Field(
        default_factory=dict, description="method_parameters of neural_sparse on sparse_vector"
    )
    chunk_size: int = Field(500, gt=0)
    max_chunk_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_retries: int = Field(5, ge=0, description="retries of 429-rejected bulk items")
    initial_backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)


class RolloutConfig(Section):
    """Zero-downtime model rollout on OpenSearch (index/rollout.py, ``jobs/index.py --rollout``)."""

    alias: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_\-.]*$", description="read alias; default: index.name"
    )
    keep_previous: int = Field(1, ge=0, description="old versioned indices kept for rollback")
    count_tolerance: int = Field(0, ge=0, description="allowed |indexed - source| documents")
    hash_length: int = Field(12, ge=6, le=64)


class IndexConfig(Section):
    """Which :class:`spladeray.index.SparseIndex` backend to use and where.

    ``batch_size`` / ``actors`` / ``resume`` drive the bulk indexing job (jobs/index.py).
    """

    backend: Literal["local", "opensearch"] = "local"
    name: str = Field("spladeray", pattern=r"^[a-z0-9][a-z0-9_\-.]*$")
    path: ConfigPath = Field(Path("runs/index"), description="root folder of the local backend")
    opensearch: OpenSearchConfig = Field(default_factory=OpenSearchConfig)
    batch_size: int = Field(256, gt=0, description="documents per encode+write batch (job)")
    actors: int = Field(2, gt=0, description="encoder actors of the indexing job")
    resume: bool = Field(False, description="skip ids already in the index (job)")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    search: Literal["exact", "seismic"] = Field(
        "exact", description="local backend: exact top-k, or approximate with Seismic"
    )
    seismic: dict[str, Any] = Field(
        default_factory=dict, description="Seismic build/search parameters (local backend)"
    )
    text_language: str | None = Field(
        "english",
        description="local backend text search (BM25, hybrid /search): PyStemmer stemmer and "
        "bm25s stopword language; null: no stemming, no stopwords (OpenSearch: the analyzer)",
    )

    @model_validator(mode="after")
    def _known_language(self) -> IndexConfig:
        import Stemmer

        known = Stemmer.algorithms()
        if self.text_language is not None and self.text_language not in known:
            raise ValueError(f"unknown text_language {self.text_language!r}; one of {known}")
        return self


class DataConfig(Section):
    """A BEIR-format dataset: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

    beir_dir: StorageURI = Field(description="a BEIR directory: a local path or a URI")
    split: str = "dev"
    corpus_limit: int | None = Field(None, gt=0, description="use only the first N documents")


class DemoConfig(Section):
    """What ``make demo`` prints."""

    num_queries: int = Field(3, gt=0)
    top_hits: int = Field(3, gt=0)
    top_tokens: int = Field(8, gt=0)


class HoldoutConfig(Section):
    """A deterministic part of a query set (:mod:`spladeray.data.split`): ``part: train`` keeps
    the queries outside the held-out ``fraction``, ``part: validation`` the held-out ones."""

    part: Literal["train", "validation"]
    fraction: float = Field(0.15, gt=0, lt=1, description="share of queries held out")
    seed: int = Field(0, description="changes which queries are held out")


class PrepareSourceConfig(Section):
    """Where prepare reads (query, positive[, negatives]) from; see docs/prepare.md.

    ``beir``: ``path`` is a BEIR directory and ``split`` names ``qrels/<split>.tsv``.
    ``jsonl`` / ``parquet``: ``path`` is a file or folder of rows with the ``columns`` named below.
    ``hf``: ``hf_name`` is a Hugging Face dataset (hub id or local folder), ``split`` its split.
    """

    format: Literal["beir", "jsonl", "parquet", "hf"] = "beir"
    path: StorageURI | None = Field(None, description="a local path or a URI (s3://, gs://)")
    hf_name: str | None = None
    hf_config: str | None = None
    split: str = "train"
    min_relevance: int = Field(1, description="qrels rows below this are not positives (rejected)")
    max_queries: int | None = Field(None, gt=0, description="use only the first N queries")
    holdout: HoldoutConfig | None = Field(
        None, description="keep one part of the queries only (train, leaving validation out)"
    )
    columns: dict[str, str] = Field(
        default_factory=lambda: {
            "query": "query",
            "positive": "positive",
            "negatives": "negatives",
            "query_id": "query_id",
            "positive_id": "positive_id",
        },
        description="our column name -> the source's column name (pairs formats)",
    )


class NegativesConfig(Section):
    """Hard-negative mining: top ``depth`` of a retriever, minus positives, after ``skip_top``."""

    method: Literal["bm25", "sparse", "dense", "none"] = "bm25"
    num_negatives: int = Field(8, ge=0)
    depth: int = Field(100, gt=0, description="candidates retrieved per query")
    skip_top: int = Field(
        0, ge=0, description="drop the n best non-positive hits (false negatives)"
    )
    model: ModelRef | None = Field(None, description="encoder for sparse/dense mining")
    stemmer: str | None = Field("english", description="PyStemmer language for BM25; null: none")
    stopwords: str | None = Field("en", description="bm25s stopword list; null: none")
    batch_size: int = Field(64, gt=0, description="texts per forward pass (sparse/dense)")
    actors: int = Field(1, gt=0)
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per miner actor")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per miner and corpus-encoder actor (sparse/dense models)"
    )


class TeacherConfig(Section):
    """One teacher: ``dense`` (SentenceTransformer), ``cross`` (CrossEncoder), ``sparse`` (SPLADE),
    or ``bm25`` (the BM25 mining index's scores; needs ``negatives.method: bm25``, no model).

    ``path`` may be ``pkg:<python_package>/<subdir>`` for a model shipped inside a package.
    """

    kind: Literal["dense", "cross", "sparse", "bm25"]
    path: ModelRef | None = Field(None, description="the model (every kind but bm25)")
    enabled: bool = True
    weight: float = Field(1.0, ge=0, description="weight in the ensemble")
    batch_size: int = Field(64, gt=0, description="texts or pairs per forward pass")
    max_length: int | None = Field(None, gt=0, description="truncation; None keeps the model's")
    actors: int = Field(1, gt=0, description="actor pool size (fixed, or the minimum)")
    max_actors: int | None = Field(None, gt=0, description="autoscale up to this many actors")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor")
    num_gpus: float = Field(
        1.0, ge=0, description="GPUs per actor (device auto: only if the cluster has GPUs)"
    )
    device: str = Field(
        "auto", description="auto (CUDA only in an actor that holds a GPU) | cpu | cuda"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="dense/cross forward precision: auto = bfloat16 autocast on a CPU with "
        "native bf16 (AVX512-BF16/AMX), else float32",
    )

    @model_validator(mode="after")
    def _model_path(self):
        if self.kind != "bm25" and self.path is None:
            raise ValueError(f"a {self.kind} teacher needs path (its model)")
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(
                f"max_actors ({self.max_actors}) is below actors ({self.actors}), the pool's minimum"
            )
        return self


class EnsembleConfig(Section):
    """The ensemble score column (see ``spladeray.data.teachers.ensemble``)."""

    enabled: bool = True
    scale: float = Field(1.0, gt=0, description="factor applied to the weighted mean")


def _teacher_name(name: str) -> str:
    if name == "ensemble":
        raise ValueError("'ensemble' is reserved for the ensemble column")
    return name


TeacherName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$"), AfterValidator(_teacher_name)]


class PrepareConfig(Section):
    """Training-data preparation (jobs/prepare.py): readers, negatives, teachers, output."""

    output_dir: StorageURI = Field(
        "runs/prepared", description="where the shards, manifest and rejects go: a path or a URI"
    )
    source: PrepareSourceConfig = Field(default_factory=PrepareSourceConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    teachers: dict[TeacherName, TeacherConfig] = Field(
        default_factory=dict, description="name -> teacher; its column is score_<name>"
    )
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    batch_size: int = Field(32, gt=0, description="rows (query, positive) per Ray Data batch")
    rows_per_shard: int = Field(50_000, gt=0, description="upper bound of rows per parquet file")
    progress: bool = Field(True, description="Ray Data progress bars")
    force: bool = Field(False, description="rebuild finished output (same as --force)")
    actor_start_timeout_s: int = Field(
        900, gt=0, description="wait this long for every actor pool to start (model loads)"
    )

    @model_validator(mode="after")
    def _bm25_teacher_needs_bm25_mining(self):
        bm25 = [n for n, t in self.teachers.items() if t.kind == "bm25" and t.enabled]
        if bm25 and self.negatives.method != "bm25":
            raise ValueError(
                f"teacher(s) {bm25} of kind bm25 score with the BM25 mining index: "
                f"set negatives.method to bm25 (it is {self.negatives.method!r})"
            )
        return self


class TrainLossConfig(Section):
    """One loss term; ``losses`` is a list of these, summed with their weights."""

    name: Literal["infonce", "margin_mse", "kl"]
    weight: float = Field(1.0, ge=0.0)
    teacher: str = Field(
        "ensemble",
        pattern=r"^[A-Za-z0-9_]+$",
        description="teacher column for distillation losses: score_<teacher> in the prepared data",
    )
    temperature: float = Field(
        1.0, gt=0.0, description="infonce: logits / T; kl: student scores / T (and teacher's)"
    )
    teacher_temperature: float | None = Field(
        None, gt=0.0, description="kl: teacher scores / T_t; None = temperature"
    )


class TrainRegularizerConfig(Section):
    """Sparsity regulariser ``lambda_t * R(W)`` with ``lambda_t = lambda * min(1, (t/T)^2)``."""

    kind: Literal["flops", "l1"] = "flops"
    query_lambda: float = Field(5e-4, ge=0.0, description="ignored for doc-only models")
    document_lambda: float = Field(3e-4, ge=0.0)
    warmup_steps: int | None = Field(
        None, ge=0, description="T of the quadratic warmup; None = a third of max_steps"
    )
    idf_aware: bool = Field(
        False, description="doc-only: weight each document dimension by the query IDF"
    )


class TrainCheckpointConfig(Section):
    """Ray Train checkpoints: every N optimizer steps and at the end."""

    every_steps: int = Field(100, gt=0)
    num_to_keep: int | None = Field(2, gt=0)
    score_attribute: str | None = Field(
        "step", description="reported metric ranking checkpoints for num_to_keep"
    )
    score_order: Literal["max", "min"] = "max"
    save_model: bool = Field(
        True,
        description="every checkpoint also holds model/ (save_pretrained), so the checkpoint a "
        "validation sweep selects is a model that evaluate, export and serve load as it is; "
        "false: only the final checkpoint (model/ is about a third of train_state.pt)",
    )


class TrainEvalConfig(Section):
    """Periodic evaluation on rank 0: exact retrieval on the embedded index."""

    beir_dir: StorageURI = Field(description="a BEIR directory: a local path or a URI")
    split: str = "dev"
    corpus_limit: int | None = Field(
        None,
        gt=0,
        description="the first N documents: rank 0 holds and encodes them between steps "
        "(docs/evaluate.md, 'Training-time evaluation'); null: the whole corpus",
    )
    holdout: HoldoutConfig | None = Field(
        None, description="evaluate one part of the split's queries (validation)"
    )
    every_steps: int | None = Field(None, gt=0, description="None = only at the end")
    at_start: bool = Field(False, description="also evaluate the initial model (step 0)")
    bm25: bool = Field(False, description="also evaluate bm25s on the same split, once")


class TrainMlflowConfig(Section):
    """Optional MLflow logging from rank 0 (``pip install spladeray[mlflow]``)."""

    tracking_uri: str
    experiment: str = "spladeray"


class TrainDebugConfig(Section):
    """Test-only hooks (fault injection, state dumps). Leave empty in real runs."""

    fail_at_step: int | None = Field(
        None, gt=0, description="raise in the worker right after this optimizer step"
    )
    fail_rank: int = Field(0, ge=0)
    fail_times: int = Field(1, ge=0, description="how many times the failure fires in all")
    marker_dir: ConfigPath | None = Field(
        None, description="where failure markers live (default: the run's storage dir)"
    )
    dump_dir: ConfigPath | None = Field(
        None, description="write resume_step<N>_rank<R>.pt (step + parameters) after a restore"
    )
    collective_log_dir: ConfigPath | None = Field(
        None,
        description="record every torch.distributed collective (op, tensor device, training "
        "device) to <dir>/rank<R>_<pid>.jsonl",
    )
    hold_after_step: int | None = Field(
        None,
        gt=0,
        description="after this optimizer step (and its report) every rank waits until "
        "hold_file exists, at most 10 minutes: a test kills a node while the run is held",
    )
    hold_file: ConfigPath | None = Field(None, description="the file that releases the hold")
    nan_at_steps: list[int] = Field(
        default_factory=list,
        description="make the loss of these optimizer steps (1-based) NaN on fail_rank",
    )


class TrainConfig(Section):
    """Distributed training on Ray Train (jobs/train.py); see docs/train.md."""

    output_dir: StorageURI = Field(
        "runs/train",
        description="a path or URI: <output_dir>/<name>/model is the exported final model, "
        "<output_dir>/<name>/tensorboard the event files",
    )
    data_dir: StorageURI = Field(
        "runs/prepared",
        description="output_dir of jobs/prepare.py (shards/*.parquet): a local path or a URI",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$",
        description="Ray Train run name; re-running the same name resumes. None = run_name",
    )
    storage_path: StorageURI | None = Field(
        None,
        description="local dir or URI (s3://...) for checkpoints and baselines.json; "
        "None = <output_dir>/ray",
    )
    num_workers: int = Field(1, gt=0)
    min_workers: int | None = Field(
        None,
        gt=0,
        description="elastic training: after a node loss, restart with as few as this many "
        "workers (up to num_workers) instead of waiting for a replacement node; None = fixed",
    )
    elastic_resize_interval_s: float = Field(
        60.0,
        ge=0,
        description="elastic runs: how often a running worker group checks whether more "
        "workers fit now (growing restarts it from the latest checkpoint)",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto = bf16 autocast on a GPU that supports it (else fp32, with a "
        "warning), fp32 on CPU",
    )
    batch_size: int = Field(16, gt=0, description="queries per worker per micro-batch")
    grad_accum_steps: int = Field(1, gt=0)
    num_negatives: int = Field(1, ge=0, description="hard negatives per query (cycled if fewer)")
    max_steps: int = Field(1000, gt=0, description="optimizer steps in total")
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_decay: Literal["linear", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    train_idf: bool = Field(False, description="doc-only: make the query IDF table trainable")
    idf_lr: float | None = Field(None, gt=0, description="lr of the IDF table; None = lr")
    shuffle_buffer: int = Field(256, ge=0, description="local shuffle buffer rows; 0 = off")
    max_query_length: int | None = Field(None, gt=0, description="None = model.max_query_length")
    max_document_length: int | None = Field(None, gt=0)
    losses: list[TrainLossConfig] = Field(default_factory=lambda: [TrainLossConfig(name="infonce")])
    mask_in_batch_positives: bool = Field(
        True,
        description="InfoNCE: a document in the batch that is a positive of the query "
        "(query_positive_ids) is not one of its negatives",
    )
    regularizer: TrainRegularizerConfig = Field(default_factory=TrainRegularizerConfig)
    log_every_steps: int = Field(10, gt=0)
    checkpoint: TrainCheckpointConfig = Field(default_factory=TrainCheckpointConfig)
    eval: TrainEvalConfig | None = None
    tensorboard: bool = True
    mlflow: TrainMlflowConfig | None = None
    max_failures: int = Field(0, ge=-1, description="worker-group restarts; -1 = unlimited")
    nonfinite: Literal["skip", "stop"] = Field(
        "skip",
        description="a NaN/inf loss on any rank: skip that optimizer step (weights untouched), "
        "or stop the run with an error",
    )
    max_nonfinite_steps: int = Field(
        10, ge=0, description="skip: stop the run once more steps than this were skipped"
    )
    debug: TrainDebugConfig = Field(default_factory=TrainDebugConfig)

    @model_validator(mode="after")
    def _elastic_range(self) -> TrainConfig:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed num_workers ({self.num_workers})"
            )
        return self

    @property
    def workers(self) -> int | tuple[int, int]:
        """``ScalingConfig(num_workers=...)``: ``num_workers``, or ``(min_workers, num_workers)``
        for an elastic run (Ray Train V2)."""
        if self.min_workers is None or self.min_workers == self.num_workers:
            return self.num_workers
        return (self.min_workers, self.num_workers)

    @property
    def checkpoint_root(self) -> str:
        """Where Ray Train keeps the run (checkpoints) and the run's ``baselines.json``:
        ``storage_path``, else ``<output_dir>/ray``."""
        return self.storage_path or f"{self.output_dir.rstrip('/')}/ray"

    @property
    def teachers(self) -> tuple[str, ...]:
        """Teacher score columns the distillation losses read (sorted, each once)."""
        return tuple(sorted({lc.teacher for lc in self.losses if lc.name != "infonce"}))

    @property
    def regularizer_warmup_steps(self) -> int:
        """``T`` of the regulariser's quadratic warmup: the configured value or max_steps // 3."""
        warmup = self.regularizer.warmup_steps
        return warmup if warmup is not None else self.max_steps // 3


ROUTES = ["encode", "index", "search"]


class ServeConfig(Section):
    """The Ray Serve application (serve/app.py): batching, autoscaling, limits, behaviour.

    One deployment (``Encoder``) is both the FastAPI ingress and the batched encoder. Its
    batching knobs (``max_batch_size``, ``batch_wait_timeout_s``, the ``query_*`` pair and
    ``max_batch_tokens``) are sent to the replicas as ``user_config``, so they change without a
    restart. ``max_ongoing_requests`` must be at least the larger batch size: a replica holds at
    most that many HTTP requests, so with one text per request a bigger batch could never fill.
    """

    # dynamic batching (texts per model call)
    max_batch_size: int = Field(32, gt=0)
    batch_wait_timeout_s: float = Field(
        0.03,
        ge=0,
        description="documents: the wait for a batch to fill (bench/serve.py at concurrency 16: "
        "0.01 s -> 2 texts per model call, 0.03 s -> 5 and +12% docs/s); queries have their own",
    )
    query_max_batch_size: int = Field(32, gt=0)
    query_batch_wait_timeout_s: float = Field(0.002, ge=0)
    max_batch_tokens: int = Field(
        8192,
        gt=0,
        description="padded tokens per model call (texts x longest text): a batch is sorted by "
        "length and cut into sub-batches under this budget, so long texts never blow it up",
    )
    # autoscaling and back-pressure (HTTP requests per replica)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, gt=0)
    target_ongoing_requests: float = Field(16.0, gt=0)
    max_ongoing_requests: int = Field(
        64, gt=0, description="HTTP requests a replica holds at once; >= the batch sizes"
    )
    max_queued_requests: int = Field(
        256, ge=-1, description="requests queued per proxy before 503 (-1: unbounded)"
    )
    retry_after_s: float = Field(
        1.0, ge=0, description="Retry-After (seconds) on 503s: back-pressure, a replica lost"
    )
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(
        None,
        ge=0,
        description="with min_replicas 0: idle time before 1 -> 0 (default: the downscale delay)",
    )
    look_back_period_s: float = Field(
        30.0, gt=0, description="the autoscaler averages ongoing requests over this window"
    )
    metrics_interval_s: float = Field(
        10.0,
        gt=0,
        description="replicas and proxies report ongoing requests this often; "
        "below look_back_period_s (Ray 2.60 warns the key is deprecated when it is not 10)",
    )
    max_replicas_per_node: int | None = Field(
        None, gt=0, description="at most N replicas on one node (1: spread over nodes)"
    )
    num_cpus: float = Field(1.0, ge=0, description="ray_actor_options.num_cpus per encoder")
    num_gpus: float | Literal["auto"] = Field(
        "auto", description="GPUs per encoder replica; auto = 1 when the cluster has GPUs"
    )
    torch_threads: int | None = Field(None, gt=0, description="torch threads per replica")
    env_vars: dict[str, str] = Field(
        default_factory=lambda: {
            "OMP_WAIT_POLICY": "PASSIVE",
            "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64",
        },
        description="the replicas' environment (set at process start, before torch loads "
        "OpenMP and oneDNN). OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of "
        "spinning between batches, CPU the event loop and the proxy need (bench/serve.py: replica "
        "CPU per document 41 -> 35 ms). ONEDNN_PRIMITIVE_CACHE_CAPACITY=64: oneDNN keeps one "
        "primitive per tensor shape it has seen (1,024 by default), and texts of every length "
        "make new shapes: a replica's RSS grew 33% in 60 s of bench/load.py; with 64 it levels "
        "off. Replace the mapping to change them; {} keeps the node's environment",
    )
    graceful_shutdown_timeout_s: float = Field(20.0, gt=0)
    health_check_period_s: float = Field(
        10.0, gt=0, description="Serve checks each replica this often; a dead one is replaced then"
    )
    request_timeout_s: float = Field(60.0, gt=0)
    access_log: bool = Field(
        True,
        description="Serve's per-request access log line in the replica's log file; off saves "
        "CPU per request (bench/serve.py measures both)",
    )
    # request limits (413 / 422 with a message)
    max_documents_per_request: int = Field(256, gt=0)
    max_request_bytes: int = Field(8 * 1024 * 1024, gt=0)
    max_text_chars: int = Field(
        20_000, gt=0, description="longer texts are truncated (never failed) before tokenizing"
    )
    max_search_size: int = Field(100, gt=0)
    # behaviour
    response_format: Literal["spladeray", "ml_commons"] = Field(
        "spladeray", description="ml_commons: /encode answers like _predict/sparse_encoding"
    )
    hybrid: bool = Field(False, description="/search fuses BM25 by RRF unless the request says")
    rrf_k: float = Field(60.0, gt=0)
    refresh_after_index: bool = Field(True, description="/index makes documents searchable")
    max_query_terms: int = Field(
        1024,
        gt=0,
        description="/search keeps the heaviest N query terms (OpenSearch's "
        "indices.query.bool.max_clause_count, 1024 by default) and warns how many it dropped",
    )
    max_document_bytes: int = Field(
        5 * 1024 * 1024,
        gt=0,
        description="/index fails (by id) a document whose stored fields exceed N bytes of JSON",
    )
    bearer_token_env: str | None = Field(
        "SPLADERAY_API_TOKEN",
        description="env var holding a token that the routes in `protect` require "
        "(Authorization: Bearer). Unset or empty: the API is open, which only a loopback bind "
        "allows (one loud log line); any other bind refuses to start (serving/security.py)",
    )
    protect: Annotated[
        list[Literal["index", "search", "encode"]], AfterValidator(lambda r: sorted(set(r)))
    ] = Field(
        default_factory=lambda: ["encode", "index", "search"],
        description="routes that need the bearer token: index, search, encode (encode also "
        "covers the ML Commons _predict routes); all by default",
    )
    allowed_indices: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        description="index names (fnmatch patterns) a request's `index` may give; others get a "
        "403. Default: index.name, the rollout alias and its versions <alias>-<hex>",
    )
    trusted_hosts: list[str] | None = Field(
        None,
        description="Host header values (fnmatch patterns, e.g. search.example.com, *.internal) "
        "the app answers; others get a 400. None: any host",
    )
    docs: bool = Field(
        True,
        description="/docs and /redoc (Swagger UI and ReDoc, loaded by the browser from a CDN); "
        "false answers 404 there (/openapi.json stays)",
    )
    model_roots: list[str] | None = Field(
        None,
        description="directories (or URI prefixes) a rollout alias's _meta.model_path may name; "
        "another model is refused (503) before it loads. Default: the directory that holds "
        "model.path. A model is also served only if its files hash to the index's "
        "_meta.model_files_sha256",
    )
    alias_cache_s: float = Field(
        5.0,
        ge=0,
        description="OpenSearch: how long the index alias -> (concrete index, model) resolution "
        "is cached per ingress replica; 0 resolves on every request",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bind = sorted(k for k in ("host", "port") if k in data)
            if bind:
                raise ValueError(
                    f"serve.{bind[0]} was removed: it never set the bind address. That is Serve's "
                    "http_options (host, port) in serve/config.yaml, or serve.start(http_options="
                    "...) in Python (docs/serve.md)"
                )
            gone = sorted(
                k for k in ("ingress_replicas", "ingress_max_ongoing_requests") if k in data
            )
            if gone:
                raise ValueError(
                    f"serve.{gone[0]} was removed: the ingress and the encoder are one deployment "
                    "now; use min_replicas/max_replicas and max_ongoing_requests"
                )
        return data

    @model_validator(mode="after")
    def _check_scaling(self) -> ServeConfig:
        if self.target_ongoing_requests >= self.max_ongoing_requests:
            raise ValueError("target_ongoing_requests must be below max_ongoing_requests")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"serve.look_back_period_s ({self.look_back_period_s:g}) must exceed "
                f"serve.metrics_interval_s ({self.metrics_interval_s:g}): the autoscaler averages "
                "the reports of that window"
            )
        largest = max(self.max_batch_size, self.query_max_batch_size)
        if self.max_ongoing_requests < largest:
            which = "max_batch_size" if largest == self.max_batch_size else "query_max_batch_size"
            raise ValueError(
                f"serve.max_ongoing_requests ({self.max_ongoing_requests}) is below serve.{which} "
                f"({largest}): a replica never holds more requests than max_ongoing_requests, so "
                "with one text per request its batches could never fill. Raise "
                f"max_ongoing_requests to at least {largest}, or lower {which}"
            )
        return self

    @model_validator(mode="after")
    def _check_protect(self) -> ServeConfig:
        if self.bearer_token_env and not self.protect:
            raise ValueError("serve.bearer_token_env is set but serve.protect lists no route")
        # without a token env the defaults (all routes, or the old [index]) may stand, so that a
        # dumped config reloads; another explicit list would protect nothing
        if not self.bearer_token_env and self.protect not in (list(ROUTES), ["index"]):
            raise ValueError(
                f"serve.protect lists {self.protect} but serve.bearer_token_env is not set, "
                "so nothing would be protected"
            )
        return self


class EvalDatasetConfig(Section):
    """One BEIR-format dataset of an evaluation run."""

    name: str | None = Field(None, description="label in the tables; default: the folder name")
    beir_dir: StorageURI = Field(description="a BEIR directory: a local path or a URI")
    split: str = "test"
    corpus_limit: int | None = Field(None, gt=0, description="use only the first N documents")
    holdout: HoldoutConfig | None = Field(
        None, description="evaluate one part of the split's queries (spladeray.data.split)"
    )


class EvalBM25Config(Section):
    """BM25 with ``bm25s`` (lucene variant), English stopwords and Snowball stemming."""

    kind: Literal["bm25"] = "bm25"
    name: str = "bm25"
    k1: float = Field(1.5, gt=0)
    b: float = Field(0.75, ge=0, le=1)
    stemmer: str | None = Field("english", description="PyStemmer algorithm; null: no stemming")
    stopwords: str | None = Field("en", description="bm25s stopword list; null: keep all")


class EvalSparseConfig(Section):
    """A learned sparse encoder (any SpladeEncoder) searched exactly, or through an index."""

    kind: Literal["sparse"] = "sparse"
    name: str = "sparse"
    model: ModelConfig | None = Field(None, description="null: the top-level model section")
    index: IndexConfig | None = Field(
        None,
        description="null: exact search on a temporary embedded index; set a backend "
        "(e.g. opensearch) to search through it",
    )
    hybrid: bool = Field(
        False,
        description="with an index: fuse the index's BM25 (text_search) by RRF, the hybrid "
        "POST /search serves (spladeray.index.search)",
    )
    rrf_k: float = Field(60.0, gt=0, description="hybrid: RRF's k (serve.rrf_k when served)")

    @model_validator(mode="after")
    def _check_hybrid(self) -> EvalSparseConfig:
        if self.hybrid and self.index is None:
            raise ValueError(
                f"sparse system {self.name!r}: hybrid searches through an index; set index"
            )
        return self


class EvalDenseConfig(Section):
    """A dense sentence-transformers bi-encoder, exact cosine / dot-product search."""

    kind: Literal["dense"] = "dense"
    name: str = "dense"
    model: ModelRef | None = Field(
        None, description="sentence-transformers dir or hub id; null: bundled all-MiniLM-L6-v2"
    )
    batch_size: int = Field(64, gt=0)
    max_seq_length: int | None = Field(None, gt=0)
    normalize: bool = True
    query_prompt: str = ""
    document_prompt: str = ""
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")


class EvalHybridConfig(Section):
    """Fusion of the runs of other systems of the same evaluation (named in ``fuse``)."""

    kind: Literal["hybrid"] = "hybrid"
    name: str = "hybrid"
    fuse: list[str] = Field(min_length=2, description="names of the systems to fuse")
    method: Literal["rrf", "score"] = "rrf"
    rrf_k: float = Field(60.0, gt=0, description="RRF: score = sum 1 / (k + rank)")
    weights: list[float] | None = Field(
        None, description="per fused system (default equal); score fusion of min-max scores"
    )


EvalSystemConfig = Annotated[
    EvalBM25Config | EvalSparseConfig | EvalDenseConfig | EvalHybridConfig,
    Field(discriminator="kind"),
]


def _default_systems() -> list:
    return [EvalBM25Config(), EvalSparseConfig()]


class EvaluateConfig(Section):
    """Evaluation (jobs/evaluate.py): systems x datasets, metrics, sparsity, latency, reports."""

    output_dir: StorageURI = Field(
        "runs/eval", description="local dir or URI (s3://...) for the reports and run files"
    )
    datasets: list[EvalDatasetConfig] = Field(
        default_factory=list, description="empty: the top-level data section"
    )
    systems: list[EvalSystemConfig] = Field(default_factory=_default_systems, min_length=1)
    measures: list[str] = Field(
        default_factory=lambda: ["nDCG@10", "R@1", "R@10", "R@100", "RR@10"],
        description="ir-measures names",
    )
    depth: int = Field(100, gt=0, description="hits retrieved per query (and fused)")
    latency_queries: int = Field(
        100, ge=0, description="queries timed one at a time (encode + search) per system"
    )
    distributed: bool = Field(
        False, description="encode corpora with a Ray Data actor pool on the configured cluster"
    )
    num_actors: int = Field(2, gt=0, description="encoder actors when distributed")
    actor_batch_size: int = Field(64, gt=0, description="documents per Ray Data batch")
    chart: bool = True
    title: str | None = None

    @model_validator(mode="after")
    def _check_systems(self) -> EvaluateConfig:
        names = [s.name for s in self.systems]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"system names must be unique; repeated: {dupes}")
        for i, system in enumerate(self.systems):
            if system.kind != "hybrid":
                continue
            for ref in system.fuse:
                if ref not in names[:i] or ref == system.name:
                    raise ValueError(
                        f"hybrid {system.name!r} fuses {ref!r}, which is not a system listed "
                        "before it"
                    )
            if system.weights is not None and len(system.weights) != len(system.fuse):
                raise ValueError(f"hybrid {system.name!r}: weights must match fuse in length")
        return self


class ExportMLCommonsConfig(Section):
    """Registering the exported zip in OpenSearch ML Commons (``jobs/export.py --register``)."""

    model_group: str = Field("spladeray", description="model group name (created if missing)")
    model_group_description: str = "spladeray sparse encoders"
    cluster_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="persistent cluster settings to apply first, e.g. "
        "plugins.ml_commons.only_run_on_ml_node: false",
    )
    deploy: bool = True
    register_timeout_s: float = Field(900.0, gt=0)
    deploy_timeout_s: float = Field(900.0, gt=0)
    poll_interval_s: float = Field(2.0, gt=0)
    chunk_bytes: int = Field(10_000_000, gt=0, description="upload chunk size (ML Commons: 10 MB)")


class ExportConfig(Section):
    """Model export (jobs/export.py): OpenSearch ML Commons zips (TorchScript or ONNX) or a
    Hugging Face Hub-ready directory with a model card."""

    output_dir: StorageURI = Field(
        "runs/export", description="local dir or URI (s3://...) for the zips and register bodies"
    )
    name: str | None = Field(None, description="ML Commons model name; default: run_name")
    version: str = "1.0.0"
    description: str | None = None
    url_prefix: str | None = Field(
        None, description="where the zips will be served; fills `url` in the register bodies"
    )
    apply_pruning: bool = Field(True, description="bake model.top_k / threshold into the model")
    tolerance: float = Field(1e-4, gt=0, description="max |exported - encoder| accepted")
    model_format: Literal["TORCH_SCRIPT", "ONNX"] = Field(
        "TORCH_SCRIPT", description="what the ML Commons zip carries (jobs/export.py --format)"
    )
    license: str | None = Field(
        None, description="model card license (an SPDX id); None writes a placeholder to fill in"
    )
    ml_commons: ExportMLCommonsConfig = Field(default_factory=ExportMLCommonsConfig)


class Config(Section):
    """A whole spladeray config file."""

    run_name: str = Field("spladeray", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
    seed: int = 0
    model: ModelConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    data: DataConfig | None = None
    demo: DemoConfig = Field(default_factory=DemoConfig)
    prepare: PrepareConfig | None = None
    train: TrainConfig | None = None
    serve: ServeConfig = Field(default_factory=ServeConfig)
    evaluate: EvaluateConfig | None = None
    export: ExportConfig | None = None

    source: Path | None = Field(None, exclude=True, description="the file this was loaded from")


# the default holds no braces, so the innermost ``${...}`` matches first; expand_env repeats
# until nothing matches, which expands nested defaults: ``${A:-${B:-runs}/beir}``
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^{}]*))?\}")


def expand_env(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    A default may itself hold a ``${VAR:-default}`` (``${SPLADERAY_EVAL_BEIR:-${SPLADERAY_RUNS:-
    runs}/beir/scifact}``). An unset variable without a default is an error, so a missing secret
    never becomes "".
    """
    env = os.environ if environ is None else environ
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            raise KeyError(name)

        for _ in range(8):  # nesting depth; each pass expands the innermost level
            expanded = _ENV_PATTERN.sub(substitute, value)
            if expanded == value:
                break
            value = expanded
        return value
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    return value


def find_base_dir(config_path: Path) -> Path:
    """The project root for a config file: nearest parent with ``pyproject.toml``, else cwd."""
    for parent in config_path.resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``<file>: <dotted.key>: <message>``."""
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        lines.append(f"{source}: {key}: {item['msg']}")
    return "invalid config\n  " + "\n  ".join(lines)


def parse_config(
    data: dict[str, Any], *, base_dir: Path | None = None, source: str = "<dict>"
) -> Config:
    """Validate an already-parsed mapping (env expansion included) into a :class:`Config`."""
    try:
        data = expand_env(data)
    except KeyError as exc:
        raise ConfigError(
            f"{source}: environment variable ${{{exc.args[0]}}} is not set and has no default"
        ) from None
    try:
        return Config.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML config file.

    ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML) applied before
    validation, e.g. ``["train.max_steps=10", "model.top_k=128"]``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        apply_override(data, item, source=str(path))
    cfg = parse_config(data, base_dir=find_base_dir(path), source=str(path))
    cfg.source = path.resolve()
    return cfg


def apply_override(data: dict[str, Any], item: str, *, source: str = "<cli>") -> None:
    """Set ``a.b.c=value`` in a nested mapping, creating sections as needed."""
    if "=" not in item:
        raise ConfigError(f"{source}: override {item!r} must look like dotted.key=value")
    key, raw = item.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {key!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)
