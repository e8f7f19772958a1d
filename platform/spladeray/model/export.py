"""Export a :class:`SpladeEncoder` for OpenSearch ML Commons (local TorchScript or ONNX models).

What ML Commons runs for a custom sparse model (``function_name: SPARSE_ENCODING``) is a zip
holding one TorchScript file and ``tokenizer.json``. The TorchScript module takes one argument,
a ``Dict[str, Tensor]`` with ``input_ids`` and ``attention_mask`` (the form DJL passes, and the
form opensearch-py-ml traces), and returns ``{"output": <[batch, vocab] weights>}``; ML Commons
then turns each row's non-zeros into ``{token: weight}``. We trace the *whole* computation, masked
LM and SPLADE pooling (special tokens zeroed, and our pruning), so the cluster computes exactly
what :meth:`SpladeEncoder.encode_documents` computes.

``model_format="ONNX"`` puts one ONNX graph (:mod:`spladeray.model.onnx_export`: inputs
``input_ids`` and ``attention_mask``, output the pooled vector) in the zip instead, checked on
onnxruntime against the encoder, and registers it with ``model_format: ONNX``.

The inference-free query side of a doc-only model is a second model, ``SPARSE_TOKENIZE``: a zip
with ``tokenizer.json`` and ``idf.json`` and no network at all.

Each zip comes with its ``Register Model API`` body (``register-*.json``): ``name``, ``version``,
``model_format`` (``TORCH_SCRIPT`` or ``ONNX``), ``function_name``, ``model_content_hash_value`` (SHA-256 of the
zip, which ML Commons checks on deploy: a mismatch fails with "model content changed") and
``model_content_size_in_bytes``. Add ``url`` (register from URL) or use
:mod:`spladeray.mlcommons` (chunked upload of the local zip).

``output_dir`` is a local directory or a URI (``s3://bucket/prefix``, see :mod:`spladeray.storage`).
For a URI the zips and bodies are written to a local staging directory exactly as for a local
export, uploaded, and ``export.json`` (the summary, which marks the export complete) is written
last; the staging directory is then removed. A remote ``output_dir`` is checked for writing
before any work starts, so a missing bucket or missing credentials fail at once, naming the URI.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from spladeray import storage
from spladeray.model.encoder import SpladeEncoder
from spladeray.model.idf import save_idf
from spladeray.model.pooling import splade_activation
from spladeray.model.sparse import prune

if TYPE_CHECKING:
    from spladeray.mlcommons import RegisteredModel

logger = logging.getLogger(__name__)

SPARSE_ENCODING = "SPARSE_ENCODING"
SPARSE_TOKENIZE = "SPARSE_TOKENIZE"
MODEL_FORMAT = "TORCH_SCRIPT"
MODEL_FORMATS = ("TORCH_SCRIPT", "ONNX")

_CHECK_TEXTS = [
    "sparse retrieval with learned term weights",
    "a",
    "OpenSearch ML Commons runs TorchScript models exported from PyTorch; this text is longer "
    "than the others so that the batch is padded.",
]


class ExportError(RuntimeError):
    """The export could not be produced, or does not reproduce the encoder."""


class TorchScriptSplade(nn.Module):
    """SPLADE over the full masked-LM output, written so that ``torch.jit.trace`` generalises.

    No Python control flow depends on the data: the masked-LM runs on the padded batch, padding
    positions are masked to ``-inf`` before max pooling (``log1p(relu(-inf)) = 0``, so an empty
    text gives a zero vector), and pruning uses ``torch.where`` / ``topk`` with constants.

    Device portability: the model is traced on CPU but ML Commons may load it on a GPU node, so
    no tensor may be created on a device recorded at trace time. Hugging Face's attention-mask
    builders do exactly that (``arange(..., device=cpu)``), so we hand the model a ready 4-D
    additive mask (which those builders pass through untouched) and explicit ``token_type_ids``;
    both follow the input's device. :func:`pinned_devices` checks the traced code.
    """

    def __init__(self, encoder: SpladeEncoder, *, apply_pruning: bool = True) -> None:
        super().__init__()
        self.mlm = encoder.mlm
        self.head = encoder.head.linear if encoder.head is not None else None
        self.pooling = encoder.pooling
        self.activation = encoder.activation
        self.top_k = encoder.top_k if apply_pruning else None
        self.threshold = float(encoder.threshold) if apply_pruning else 0.0
        self.vocab_size = encoder.vocab_size
        params = inspect.signature(self.mlm.forward).parameters
        self.pass_token_type_ids = "token_type_ids" in params
        keep = torch.ones(self.vocab_size)
        keep[encoder.special_ids.cpu()] = 0.0  # special tokens get weight 0, as in the encoder
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, input: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # noqa: A002
        return {"output": self.vectors(input["input_ids"], input["attention_mask"])}

    def vectors(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, vocab]`` SPLADE weights: masked LM, activation, pooling, special tokens
        zeroed, pruning."""
        dtype = self.mlm.get_input_embeddings().weight.dtype
        additive = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        kwargs = {"input_ids": input_ids, "attention_mask": additive, "return_dict": False}
        if self.pass_token_type_ids:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        out = self.mlm(**kwargs)[0]
        logits = self.head(out) if self.head is not None else out
        mask = attention_mask.unsqueeze(-1) == 0
        if self.pooling == "max":
            pooled = logits.masked_fill(mask, float("-inf")).amax(dim=1)
            weights = splade_activation(pooled, self.activation)
        else:
            weights = splade_activation(logits, self.activation).masked_fill(mask, 0.0).sum(dim=1)
        weights = weights * self.keep.to(weights.dtype)
        return prune(weights, self.top_k, self.threshold)


@dataclass
class ExportedZip:
    """One ML Commons model zip and the body to register it with.

    ``path`` and ``register_body_path`` are local ``Path`` objects for a local export and URIs
    (``s3://...`` strings) for an export to object storage.
    """

    path: Path | str
    function_name: str
    sha256: str
    size_bytes: int
    register_body: dict[str, Any]
    register_body_path: Path | str


@dataclass
class ExportResult:
    """What :func:`export_ml_commons` wrote, with the figures worth reporting.

    ``registered`` is filled by :func:`spladeray.mlcommons.run_export` when the zips were
    registered in ML Commons (empty otherwise).
    """

    encoder_zip: ExportedZip
    tokenizer_zip: ExportedZip | None = None
    max_abs_diff: float = 0.0
    export_seconds: float = 0.0
    device_portable: bool = True
    files: list[Path | str] = field(default_factory=list)
    registered: list[RegisteredModel] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def one(z: ExportedZip | None) -> dict[str, Any] | None:
            if z is None:
                return None
            return {
                "path": str(z.path),
                "function_name": z.function_name,
                "sha256": z.sha256,
                "size_bytes": z.size_bytes,
                "register_body": str(z.register_body_path),
            }

        summary = {
            "encoder": one(self.encoder_zip),
            "model_format": self.encoder_zip.register_body.get("model_format"),
            "query_tokenizer": one(self.tokenizer_zip),
            "max_abs_diff_vs_encoder": self.max_abs_diff,
            "device_portable": self.device_portable,
            "export_seconds": round(self.export_seconds, 2),
        }
        if self.registered:
            summary["ml_commons"] = [r.summary() for r in self.registered]
        return summary


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (model zips can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def trace_encoder(
    encoder: SpladeEncoder, *, apply_pruning: bool = True, example_texts: list[str] | None = None
) -> torch.jit.ScriptModule:
    """Trace :class:`TorchScriptSplade` on CPU in float32.

    The example batch must contain padding: attention implementations may skip the mask when it
    is all ones, and tracing would bake that shortcut in.
    """
    module = TorchScriptSplade(encoder, apply_pruning=apply_pruning).eval()
    texts = example_texts or _CHECK_TEXTS
    features = encoder.tokenize(texts, "document")
    example = {
        "input_ids": features["input_ids"].cpu(),
        "attention_mask": features["attention_mask"].cpu(),
    }
    if bool(example["attention_mask"].all()):
        raise ExportError(
            "the example batch for tracing must contain padding (texts of different lengths)"
        )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (example,), strict=False, check_trace=False)
    return traced


def pinned_devices(scripted: torch.jit.ScriptModule) -> list[str]:
    """Lines of the traced code that create tensors on a fixed device (empty: portable)."""
    lines = []
    for _, module in [("", scripted), *scripted.named_modules()]:
        try:
            code = module.code
        except (RuntimeError, AttributeError):
            continue
        lines += [ln.strip() for ln in code.splitlines() if "torch.device(" in ln]
    return sorted(set(lines))


def compare_with_encoder(
    scripted: torch.jit.ScriptModule,
    encoder: SpladeEncoder,
    texts: list[str],
    *,
    pruned: bool = True,
) -> float:
    """Max absolute difference between the TorchScript output and the encoder's weights.

    The reference is ``encoder.forward`` followed by the encoder's own pruning, i.e. exactly what
    ``encode_documents`` keeps; batches of different shapes than the traced one are used.
    """
    worst = 0.0
    for batch in (texts, texts[:1], list(reversed(texts))):
        features = encoder.tokenize(batch, "document")
        ids, mask = features["input_ids"].cpu(), features["attention_mask"].cpu()
        with torch.no_grad():
            got = scripted({"input_ids": ids, "attention_mask": mask})["output"]
            ref = encoder(ids, mask).float()
            if pruned:
                ref = prune(ref, encoder.top_k, encoder.threshold)
        if got.shape != ref.shape:
            raise ExportError(f"TorchScript output shape {tuple(got.shape)} != {tuple(ref.shape)}")
        worst = max(worst, float((got - ref).abs().max()))
    return worst


def _tokenizer_json(encoder: SpladeEncoder, max_length: int, workdir: Path) -> Path:
    """``tokenizer.json`` with truncation set (ML Commons truncates with this file's settings)."""
    tok = encoder.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ExportError("ML Commons needs tokenizer.json; this model has a slow tokenizer only")
    out = workdir / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["truncation"] = {
        "direction": "Right",
        "max_length": int(max_length),
        "strategy": "LongestFirst",
        "stride": 0,
    }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _write_zip(path: Path, members: dict[str, Path]) -> None:
    """A zip written beside its target and renamed, so a reader never sees half a zip."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, src in members.items():
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(src, "rb") as fin, zf.open(info, "w") as fout:
                while block := fin.read(1 << 20):
                    fout.write(block)
    os.replace(tmp, path)


def register_body(
    zip_path: Path,
    *,
    name: str,
    version: str,
    function_name: str,
    description: str | None = None,
    url: str | None = None,
    model_group_id: str | None = None,
    model_format: str = MODEL_FORMAT,
) -> dict[str, Any]:
    """The ``POST /_plugins/_ml/models/_register`` body for a local model zip."""
    body: dict[str, Any] = {
        "name": name,
        "version": version,
        "model_format": model_format,
        "function_name": function_name,
        "model_content_hash_value": sha256_file(zip_path),
        "model_content_size_in_bytes": zip_path.stat().st_size,
    }
    if description:
        body["description"] = description
    if model_group_id:
        body["model_group_id"] = model_group_id
    if url:
        body["url"] = url
    return body


def _finish(
    zip_path: Path, body: dict[str, Any], out_dir: Path, stem: str, function_name: str
) -> ExportedZip:
    body_path = out_dir / f"register-{stem}.json"
    body_path.write_text(json.dumps(body, indent=2) + "\n")
    return ExportedZip(
        path=zip_path,
        function_name=function_name,
        sha256=body["model_content_hash_value"],
        size_bytes=body["model_content_size_in_bytes"],
        register_body=body,
        register_body_path=body_path,
    )


def export_ml_commons(
    encoder: SpladeEncoder,
    output_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str = "1.0.0",
    description: str | None = None,
    url_prefix: str | None = None,
    apply_pruning: bool = True,
    max_length: int | None = None,
    check_texts: list[str] | None = None,
    tolerance: float = 1e-4,
    allow_random_head: bool = False,
    model_format: str = MODEL_FORMAT,
) -> ExportResult:
    """Write ``<name>.zip`` (``SPARSE_ENCODING``) and, for doc-only models, ``<name>-query.zip``
    (``SPARSE_TOKENIZE``), each with its ``register-*.json`` body, then ``export.json`` (the
    summary) into ``output_dir``: a local directory or a URI (``s3://bucket/prefix``).

    ``model_format`` is ``TORCH_SCRIPT`` (a traced ``.pt``) or ``ONNX`` (a ``.onnx`` graph).
    The traced model is checked against the encoder on ``check_texts`` (batches of other shapes
    than the traced one); a difference above ``tolerance`` is an :class:`ExportError`.
    ``url_prefix`` (e.g. ``https://models.example.com/spladeray/``) fills ``url`` in the bodies.
    For a URI the files are staged locally and uploaded, ``export.json`` last, and the paths in
    the result are URIs; a URI that cannot be written is a ``storage.StorageError`` naming it,
    raised before any tracing.
    """
    encoder.check_servable(allow_random_head)
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"model_format must be one of {MODEL_FORMATS}, got {model_format!r}")
    uri = os.fspath(output_dir)
    remote = storage.is_remote(uri)
    if remote:
        storage.preflight(write=[uri])
    start = time.perf_counter()
    with storage.staged_dir(uri) as out:  # uploaded to a remote uri when the block ends
        result = _write_zips(
            encoder,
            out,
            name=name,
            version=version,
            description=description,
            url_prefix=url_prefix,
            apply_pruning=apply_pruning,
            max_length=max_length,
            check_texts=check_texts,
            tolerance=tolerance,
            model_format=model_format,
        )
    if remote:
        _point_at(result, out, uri)
    summary_uri = storage.join(uri, "export.json") if remote else out / "export.json"
    result.export_seconds = time.perf_counter() - start
    storage.write_json(summary_uri, result.summary())  # last: marks the export complete
    logger.info(
        "exported %s (%s, %d bytes, sha256 %s) in %.1fs; max |exported - encoder| = %.2e",
        result.encoder_zip.path,
        model_format,
        result.encoder_zip.size_bytes,
        result.encoder_zip.sha256[:12],
        result.export_seconds,
        result.max_abs_diff,
    )
    return result


def _point_at(result: ExportResult, staging: Path, uri: str) -> None:
    """Replace every staged local path in ``result`` by its uploaded copy under ``uri``."""

    def moved(path: Path | str) -> str:
        return storage.join(uri, Path(path).relative_to(staging).as_posix())

    for exported in (result.encoder_zip, result.tokenizer_zip):
        if exported is not None:
            exported.path = moved(exported.path)
            exported.register_body_path = moved(exported.register_body_path)
    result.files = [moved(p) for p in result.files]


def _write_zips(
    encoder: SpladeEncoder,
    out: Path,
    *,
    name: str,
    version: str,
    description: str | None,
    url_prefix: str | None,
    apply_pruning: bool,
    max_length: int | None,
    check_texts: list[str] | None,
    tolerance: float,
    model_format: str = MODEL_FORMAT,
) -> ExportResult:
    """Trace (or export to ONNX), check and zip the encoder into the local directory ``out`` (zips and bodies)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(name)
    device = encoder.device
    dtype = next(encoder.parameters()).dtype
    was_training = encoder.training
    encoder.cpu().float().eval()
    try:
        with tempfile.TemporaryDirectory(prefix="spladeray-export-") as tmp:
            work = Path(tmp)
            if model_format == "ONNX":
                from spladeray.model.onnx_export import export_onnx

                model_path = work / f"{stem}.onnx"
                diff = export_onnx(  # checks on onnxruntime; raises ExportError past tolerance
                    encoder,
                    model_path,
                    apply_pruning=apply_pruning,
                    check_texts=check_texts,
                    tolerance=tolerance,
                )
                pinned: list[str] = []  # an ONNX graph has no device
            else:
                model_path, diff, pinned = _torchscript(
                    encoder, work / f"{stem}.pt", apply_pruning, check_texts, tolerance
                )
            doc_tok = _tokenizer_json(encoder, max_length or encoder.max_document_length, work)
            zip_path = out / f"{stem}.zip"
            _write_zip(zip_path, {model_path.name: model_path, "tokenizer.json": doc_tok})
            body = register_body(
                zip_path,
                name=name,
                version=version,
                function_name=SPARSE_ENCODING,
                description=description
                or f"spladeray SPLADE-{encoder.pooling} document encoder ({stem})",
                url=(url_prefix + zip_path.name) if url_prefix else None,
                model_format=model_format,
            )
            encoder_zip = _finish(zip_path, body, out, stem, SPARSE_ENCODING)
            files = [zip_path, encoder_zip.register_body_path]

            tokenizer_zip = None
            if encoder.doc_only:
                idf = encoder.idf_table() or {}
                idf_path = work / "idf.json"
                save_idf(idf, idf_path)
                qwork = work / "query"
                q_tok = _tokenizer_json(encoder, encoder.max_query_length, qwork)
                q_zip = out / f"{stem}-query.zip"
                _write_zip(q_zip, {"tokenizer.json": q_tok, "idf.json": idf_path})
                q_body = register_body(
                    q_zip,
                    name=f"{name}-query",
                    version=version,
                    function_name=SPARSE_TOKENIZE,
                    description=f"spladeray inference-free query tokenizer for {stem} (idf.json)",
                    url=(url_prefix + q_zip.name) if url_prefix else None,
                )
                tokenizer_zip = _finish(q_zip, q_body, out, f"{stem}-query", SPARSE_TOKENIZE)
                files += [q_zip, tokenizer_zip.register_body_path]
    finally:
        encoder.to(device=device, dtype=dtype)
        encoder.train(was_training)
    return ExportResult(
        encoder_zip=encoder_zip,
        tokenizer_zip=tokenizer_zip,
        max_abs_diff=diff,
        device_portable=not pinned,
        files=files,
    )


def _torchscript(
    encoder: SpladeEncoder,
    pt_path: Path,
    apply_pruning: bool,
    check_texts: list[str] | None,
    tolerance: float,
) -> tuple[Path, float, list[str]]:
    """Trace, save, reload and check the TorchScript model; (path, max diff, pinned lines)."""
    scripted = trace_encoder(encoder, apply_pruning=apply_pruning)
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; ML Commons needs it
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(scripted, str(pt_path))
        reloaded = torch.jit.load(str(pt_path), map_location="cpu")
    diff = compare_with_encoder(
        reloaded, encoder, check_texts or _CHECK_TEXTS, pruned=apply_pruning
    )
    pinned = pinned_devices(reloaded)
    if pinned:
        logger.warning(
            "the traced model creates tensors on a fixed device (%s); deploy it on CPU "
            "ML nodes only",
            pinned[0],
        )
    if diff > tolerance:
        raise ExportError(
            f"the TorchScript model differs from the encoder by {diff:.3g} "
            f"(tolerance {tolerance:g}); refusing to write a model that would index "
            "different vectors than spladeray serves"
        )
    return pt_path, diff, pinned


def export_from_config(
    cfg, *, url_prefix: str | None = None, model_format: str | None = None
) -> ExportResult:
    """Load ``cfg.model`` and export it as ``cfg.export`` says (defaults when absent);
    ``model_format`` (``TORCH_SCRIPT`` | ``ONNX``) replaces ``export.model_format``.

    A remote ``export.output_dir`` is checked for writing before the model is loaded.
    """
    from spladeray.config import ExportConfig
    from spladeray.model.loading import load_encoder_from_config

    ecfg = cfg.export or ExportConfig()
    if storage.is_remote(ecfg.output_dir):
        storage.preflight(write=[ecfg.output_dir])
    model_cfg = cfg.model.model_copy(update={"device": "cpu", "dtype": "float32"})
    encoder = load_encoder_from_config(model_cfg)
    return export_ml_commons(
        encoder,
        ecfg.output_dir,
        name=ecfg.name or cfg.run_name,
        version=ecfg.version,
        description=ecfg.description,
        url_prefix=url_prefix or ecfg.url_prefix,
        apply_pruning=ecfg.apply_pruning,
        tolerance=ecfg.tolerance,
        allow_random_head=cfg.model.allow_random_head,
        model_format=model_format or ecfg.model_format,
    )


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.split("/")[-1])
    return stem.strip("-.") or "model"


__all__ = [
    "ExportError",
    "ExportResult",
    "ExportedZip",
    "TorchScriptSplade",
    "compare_with_encoder",
    "export_from_config",
    "export_ml_commons",
    "pinned_devices",
    "register_body",
    "sha256_file",
    "trace_encoder",
]
