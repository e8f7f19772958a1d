"""The configuration schema: one pydantic model per YAML section, and ``load_config(path)``.

Every model forbids unknown keys, so a typo fails at load time with the dotted key and the file
named. String values may use ``${VAR}`` and ``${VAR:-default}``; they are expanded from the
environment when the file is loaded (never on import). Relative paths are resolved against the
project root: the nearest parent of the config file that holds ``pyproject.toml`` (else the
current directory), so ``../shared/assets`` means the same thing from any working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
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


def _resolve_model_ref(value: str, info: ValidationInfo) -> str:
    """A local model path is resolved like :data:`ConfigPath`; a hub id (``org/name``) is kept."""
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
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class RayConfig(Section):
    """Where Ray runs: ``address: null`` starts a local cluster, ``auto`` joins a running one."""

    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)
    num_gpus: int | None = Field(None, ge=0)
    include_dashboard: bool = False


class OpenSearchConfig(Section):
    """Connection and index settings for the OpenSearch backend.

    Secrets never live here: ``username_env`` / ``password_env`` name environment variables.
    """

    hosts: list[str] = Field(default_factory=lambda: ["https://localhost:9200"])
    verify_certs: bool = True
    ca_certs: ConfigPath | None = None
    username_env: str | None = "OPENSEARCH_USERNAME"
    password_env: str | None = "OPENSEARCH_PASSWORD"
    aws_sigv4: bool = False
    aws_region: str | None = None
    aws_service: Literal["es", "aoss"] = "es"
    timeout_s: float = Field(30.0, gt=0)
    query_type: Literal["rank_feature", "neural_sparse"] = "rank_feature"
    field_type: Literal["rank_features", "sparse_vector"] = "rank_features"
    index_settings: dict[str, Any] = Field(default_factory=dict)
    chunk_size: int = Field(500, gt=0)
    max_chunk_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_retries: int = Field(5, ge=0)
    initial_backoff_s: float = Field(1.0, ge=0)


class IndexConfig(Section):
    """Which :class:`spladeray.index.SparseIndex` backend to use and where."""

    backend: Literal["local", "opensearch"] = "local"
    name: str = Field("spladeray", pattern=r"^[a-z0-9][a-z0-9_\-.]*$")
    path: ConfigPath = Field(Path("runs/index"), description="root folder of the local backend")
    opensearch: OpenSearchConfig = Field(default_factory=OpenSearchConfig)


class DataConfig(Section):
    """A BEIR-format dataset: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``."""

    beir_dir: ConfigPath
    split: str = "dev"
    corpus_limit: int | None = Field(None, gt=0, description="use only the first N documents")


class DemoConfig(Section):
    """What ``make demo`` prints."""

    num_queries: int = Field(3, gt=0)
    top_hits: int = Field(3, gt=0)
    top_tokens: int = Field(8, gt=0)


class PrepareConfig(Section):
    """Training-data preparation (jobs/prepare.py). Extended by the data stage."""

    output_dir: ConfigPath = Path("runs/prepared")


class TrainConfig(Section):
    """Distributed training (jobs/train.py). Extended by the training stage."""

    output_dir: ConfigPath = Path("runs/train")


class ServeConfig(Section):
    """The Ray Serve application (serve/app.py). Extended by the serving stage."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)


class EvalDatasetConfig(Section):
    """One BEIR-format dataset of an evaluation run."""

    name: str | None = Field(None, description="label in the tables; default: the folder name")
    beir_dir: ConfigPath
    split: str = "test"
    corpus_limit: int | None = Field(None, gt=0, description="use only the first N documents")


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

    output_dir: ConfigPath = Path("runs/eval")
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


class ExportConfig(Section):
    """Model export (jobs/export.py). Extended by the production stage."""

    output_dir: ConfigPath = Path("runs/export")


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

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none), for caching outputs."""
        data = self.model_dump(mode="json", include=set(sections) or None)
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    An unset variable without a default is an error, so a missing secret never becomes "".
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

        return _ENV_PATTERN.sub(substitute, value)
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
