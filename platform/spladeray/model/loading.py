"""Load a :class:`SpladeEncoder` from any of the layouts users have on disk or on the hub.

The cases, tried in this order on the resolved directory:

(a) a directory saved by us or by sentence-transformers (``modules.json``), including a
    query/document ``Router`` whose query side is a ``SparseStaticEmbedding`` (doc-only models);
(c) a legacy OpenSearch directory: a base encoder plus ``neural_sparse_head.pt`` (a linear
    projection ``hidden -> vocab``);
(b) a plain masked-LM directory or hub id (``naver/splade-...``,
    ``opensearch-project/opensearch-neural-sparse-encoding-...``), with an optional ``idf.json``.

Whenever the vocabulary projection has to be initialised randomly (a base encoder without
``neural_sparse_head.pt``, or a checkpoint without its MLM head weights) we log a loud warning,
record ``random_head`` in the metadata, and :meth:`SpladeEncoder.check_servable` refuses the model
for indexing and serving unless explicitly allowed.

A directory whose ``config.json`` or ``tokenizer_config.json`` has an ``auto_map`` (its own Python
modeling or tokenizer code, e.g. ``ltg/norbert3``) loads only with ``trust_remote_code=True``
(``model.trust_remote_code``); otherwise :class:`RemoteCodeError` says so before any code runs.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from spladeray.model.encoder import SpladeEncoder
from spladeray.model.heads import LinearHead
from spladeray.model.idf import load_idf, tensor_to_idf
from spladeray.model.precision import normalize

logger = logging.getLogger(__name__)

METADATA_FILE = "spladeray.json"
IDF_FILE = "idf.json"
LEGACY_HEAD_FILE = "neural_sparse_head.pt"


class RemoteCodeError(ValueError):
    """A model directory needs its own Python code and ``trust_remote_code`` is off."""


def check_remote_code(root: Path, trust_remote_code: bool) -> None:
    """Refuse a directory whose config or tokenizer names custom code (``auto_map``) unless
    ``trust_remote_code``; transformers would otherwise fail deep inside with a generic error."""
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = root / name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text()).get("auto_map")
        if auto_map:
            classes = sorted({str(v if isinstance(v, str) else v[0]) for v in auto_map.values()})
            raise RemoteCodeError(
                f"{root}: {name} maps to code shipped with the model ({', '.join(classes)}); "
                "loading it runs that code. Set model.trust_remote_code: true (or pass "
                "trust_remote_code=True) if you trust its source."
            )


def resolve_model_dir(path_or_hub_id: str) -> Path:
    """A local directory for a path, a URI (``s3://bucket/model``: downloaded to a local cache
    keyed by the URI and its objects' ETags, see :func:`spladeray.storage.local_copy`) or a
    Hugging Face hub id (downloaded with huggingface_hub)."""
    from spladeray import storage

    if storage.is_remote(path_or_hub_id):
        return storage.local_copy(path_or_hub_id)
    local = Path(path_or_hub_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise NotADirectoryError(f"model path {local} is a file, expected a directory")
    if path_or_hub_id.startswith((".", "/", "~")) or path_or_hub_id.count("/") > 1:
        raise FileNotFoundError(f"model directory not found: {local}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path_or_hub_id))
    except Exception as exc:  # offline, unknown repo, auth: say what was tried
        raise FileNotFoundError(
            f"{path_or_hub_id!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc})"
        ) from exc


def load_encoder(path_or_hub_id: str, **overrides: Any) -> SpladeEncoder:
    """Load an encoder; ``overrides`` are :class:`SpladeEncoder` keyword arguments.

    ``idf_path`` may be given to load (or replace) the doc-only query table; ``device`` places
    the model and ``dtype`` (``float32`` default, ``bfloat16``, ``float16``, ``auto``) sets the
    precision bulk encoding runs in (:mod:`spladeray.model.precision`); the weights stay fp32.
    """
    root = resolve_model_dir(path_or_hub_id)
    device = overrides.pop("device", None)
    dtype = overrides.pop("dtype", None)
    idf_path = overrides.pop("idf_path", None)
    trust = bool(overrides.pop("trust_remote_code", False))
    settings: dict[str, Any] = {}
    metadata: dict[str, Any] = {"source": str(path_or_hub_id)}
    if (root / METADATA_FILE).is_file():
        saved = json.loads((root / METADATA_FILE).read_text())
        settings.update(saved.get("config", {}))
        metadata.update(saved.get("metadata", {}))
    idf: dict[str, float] | None = None

    if (root / "modules.json").is_file():
        mlm, tokenizer, head, st_settings, idf = _load_sentence_transformers(root, metadata, trust)
        for key, value in st_settings.items():
            settings.setdefault(key, value)
    elif (root / LEGACY_HEAD_FILE).is_file():
        mlm, tokenizer, head = _load_legacy(root, metadata, trust)
    else:
        mlm, tokenizer, head = _load_masked_lm(root, metadata, trust)

    if idf_path is not None:
        idf = load_idf(idf_path)
    elif idf is None and (root / IDF_FILE).is_file():
        idf = load_idf(root / IDF_FILE)
    if idf is not None and "doc_only" not in settings:
        settings["doc_only"] = True  # an idf.json beside the model means an inference-free model
    settings.update({k: v for k, v in overrides.items() if v is not None})  # None keeps saved
    if settings.get("doc_only") is None:
        settings["doc_only"] = False
    encoder = SpladeEncoder(mlm, tokenizer, head=head, idf=idf, metadata=metadata, **settings)
    if dtype is not None:  # what bulk encoding runs in (spladeray.model.precision)
        encoder.precision = normalize(dtype)
    if device is not None:
        encoder.to(_pick_device(device))
    encoder.eval()
    return encoder


def _pick_device(device: str) -> torch.device:
    """``auto``: CUDA only where this process may use a GPU (a Ray actor must hold one)."""
    from spladeray.raycluster import resolve_device

    return resolve_device(device)


def _mark_random_head(metadata: dict[str, Any], reason: str) -> None:
    metadata["random_head"] = True
    metadata["random_head_reason"] = reason
    logger.warning(
        "!!! RANDOM PROJECTION HEAD: %s. The model's sparse vectors are meaningless until it is "
        "trained; indexing and serving refuse it unless model.allow_random_head is set. !!!",
        reason,
    )


def _load_masked_lm(root: Path, metadata: dict[str, Any], trust: bool = False):
    """Case (b): a plain masked-LM; any missing head weight means a random head."""
    check_remote_code(root, trust)
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=trust)
    mlm, info = AutoModelForMaskedLM.from_pretrained(
        root, output_loading_info=True, trust_remote_code=trust
    )
    prefix = getattr(mlm, "base_model_prefix", "")
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(f"{prefix}.")]
    if missing:
        _mark_random_head(
            metadata,
            f"{root} has no weights for the masked-LM head ({', '.join(sorted(missing)[:4])}"
            f"{', ...' if len(missing) > 4 else ''})",
        )
    elif not metadata.get("random_head"):
        metadata["random_head"] = False
    return mlm, tokenizer, None


def _load_legacy(root: Path, metadata: dict[str, Any], trust: bool = False):
    """Case (c): base encoder + ``neural_sparse_head.pt``."""
    check_remote_code(root, trust)
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=trust)
    base = _load_base_without_pooler(root, trust)
    head = LinearHead(base.config.hidden_size, len(tokenizer))
    state = torch.load(root / LEGACY_HEAD_FILE, map_location="cpu", weights_only=True)
    if isinstance(state, torch.Tensor):
        state = {"weight": state}
    state = {k.removeprefix("linear."): v for k, v in state.items()}
    if "bias" not in state:
        state["bias"] = torch.zeros(state["weight"].shape[0])
    expected = tuple(head.linear.weight.shape)
    if tuple(state["weight"].shape) != expected:
        raise ValueError(
            f"{root / LEGACY_HEAD_FILE}: weight shape {tuple(state['weight'].shape)} does not "
            f"match hidden -> vocab {expected}"
        )
    head.linear.load_state_dict(state)
    metadata.setdefault("random_head", False)
    metadata["layout"] = "legacy_head"
    return base, tokenizer, head


def _load_base_without_pooler(root: Path, trust: bool = False):
    """The base encoder without its pooler (``add_pooling_layer=False``) where the architecture
    has one (BERT, RoBERTa, ...): SPLADE reads only the token states, and a pooler whose output
    never reaches the loss makes DDP fail on the second step (unused parameters)."""
    config = AutoConfig.from_pretrained(root, trust_remote_code=trust)
    if config.__class__ not in MODEL_MAPPING:  # custom code: let AutoModel resolve its auto_map
        return AutoModel.from_pretrained(root, trust_remote_code=trust)
    model_class = MODEL_MAPPING[config.__class__]
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    return model_class.from_pretrained(root, **kwargs)


def _load_sentence_transformers(root: Path, metadata: dict[str, Any], trust: bool = False):
    """Case (a): a sentence-transformers SparseEncoder directory (ours included)."""
    modules = json.loads((root / "modules.json").read_text())
    settings: dict[str, Any] = {}
    idf: dict[str, float] | None = None
    mlm_dir: Path | None = None
    pooling_dir: Path | None = None
    static_dir: Path | None = None
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        path = root / module.get("path", "")
        if kind == "Router":
            router = json.loads((path / "router_config.json").read_text())
            for name, type_name in router["types"].items():
                sub = type_name.rsplit(".", 1)[-1]
                if sub in ("Transformer", "MLMTransformer") and name in router["structure"].get(
                    "document", []
                ):
                    mlm_dir = path / name
                elif sub == "SpladePooling":
                    pooling_dir = path / name
                elif sub == "SparseStaticEmbedding":
                    static_dir = path / name
        elif kind in ("Transformer", "MLMTransformer"):
            mlm_dir = path
        elif kind == "SpladePooling":
            pooling_dir = path
    if mlm_dir is None:
        raise ValueError(f"{root}: modules.json has no masked-LM Transformer module")
    if pooling_dir is not None and (pooling_dir / "config.json").is_file():
        pool_cfg = json.loads((pooling_dir / "config.json").read_text())
        settings["pooling"] = pool_cfg.get("pooling_strategy", "max")
        settings["activation"] = pool_cfg.get("activation_function", "relu")
    mlm, tokenizer, head = (
        _load_legacy(mlm_dir, metadata, trust)
        if (mlm_dir / LEGACY_HEAD_FILE).is_file()
        else _load_masked_lm(mlm_dir, metadata, trust)
    )
    if static_dir is not None:
        idf = _load_static_embedding(static_dir, tokenizer)
        settings["doc_only"] = True
    st_cfg = mlm_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        cfg = json.loads(st_cfg.read_text())
        if cfg.get("max_seq_length"):
            settings.setdefault("max_document_length", int(cfg["max_seq_length"]))
    return mlm, tokenizer, head, settings, idf


def _load_static_embedding(path: Path, tokenizer) -> dict[str, float]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").is_file():
        weight = load_file(path / "model.safetensors")["weight"]
    elif (path / "pytorch_model.bin").is_file():
        weight = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)[
            "weight"
        ]
    else:
        raise FileNotFoundError(f"{path}: SparseStaticEmbedding weights not found")
    return tensor_to_idf(weight, tokenizer)


def load_encoder_from_config(model_cfg) -> SpladeEncoder:
    """Load the encoder a :class:`spladeray.config.ModelConfig` describes."""
    return load_encoder(
        model_cfg.path,
        pooling=model_cfg.pooling,
        max_query_length=model_cfg.max_query_length,
        max_document_length=model_cfg.max_document_length,
        document_stride=model_cfg.document_stride,
        top_k=model_cfg.top_k,
        threshold=model_cfg.threshold,
        doc_only=model_cfg.doc_only,
        idf_path=model_cfg.idf_path,
        batch_size=model_cfg.batch_size,
        device=model_cfg.device,
        dtype=model_cfg.dtype,
        trust_remote_code=model_cfg.trust_remote_code,
    )
