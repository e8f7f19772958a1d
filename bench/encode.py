"""Documents/s of spladeray's encoder at each precision / backend vs sentence-transformers.

Same model (splade-tiny), same SciFact documents (the first ``--docs``), max length 256, same
batch size, in the same run. Rows:

- ``sentence-transformers fp32`` -- ``SparseEncoder.encode_document``: the baseline;
- ``spladeray fp32`` -- ``SpladeEncoder.encode_documents_csr`` with ``dtype="float32"``;
- ``spladeray <chosen>`` -- the same with ``dtype="auto"`` (bfloat16 on a CPU with native bf16);
- candidates measured for docs/model.md: ``bf16 + backbone`` (the backbone under CPU autocast
  too), ``int8 dynamic`` (``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``),
  ``onnxruntime`` (our ONNX graph, pooling inside) and ``openvino`` (the same graph compiled by
  OpenVINO, when the package is installed);
- sentence-transformers' own ONNX / OpenVINO backend, when it loads offline (it needs
  ``optimum``; otherwise the row says why not).

The rows alternate over rounds of documents so all see the same machine load. For each row:
docs/s, ratio to sentence-transformers, peak RSS (a fresh subprocess encoding ``--memory-docs``),
the max abs difference of the document vectors to spladeray fp32, and the nDCG@10 delta to
spladeray fp32 (SciFact dev queries over these documents, exact dot product; queries encoded by
the same row). Prints a table and a final ``RESULT {json}`` line for bench/run_all.py.

    python bench/encode.py [--docs 1000] [--batch-size 32] [--rows all|main]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT

MAIN_ROWS = ["sentence-transformers fp32", "spladeray fp32", "spladeray auto"]
CANDIDATES = [
    "spladeray bf16 + backbone",
    "spladeray int8 dynamic",
    "spladeray onnxruntime fp32",
    "spladeray openvino",
    "sentence-transformers onnx",
    "sentence-transformers openvino",
]


def _model() -> str:
    from spladeray.paths import asset

    return str(asset("models", "splade-tiny"))


def _scifact():
    from spladeray.paths import asset

    return asset("beir", "scifact")


def _texts(n: int) -> list[str]:
    from spladeray.data.beir import doc_text, iter_corpus

    return [doc_text(d) for d in iter_corpus(_scifact(), limit=n)]


def _encoder(dtype: str, batch_size: int):
    from spladeray.model import SpladeEncoder

    return SpladeEncoder.from_pretrained(
        _model(), max_document_length=256, batch_size=batch_size, dtype=dtype
    )


def _graph_encoder(enc, run):
    """encode(texts, kind) for an exported graph: tokenised and length-bucketed like ours."""
    import numpy as np
    import scipy.sparse as sp

    def encode(texts, kind="document"):
        blocks = []
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for lo in range(0, len(texts), enc.batch_size):
            idx = order[lo : lo + enc.batch_size]
            f = enc.tokenize([texts[i] for i in idx], kind)
            blocks.append((idx, sp.csr_matrix(run(f["input_ids"], f["attention_mask"]))))
        stacked = sp.vstack([b for _, b in blocks], format="csr")
        inverse = np.empty(len(texts), dtype=np.int64)
        inverse[np.concatenate([i for i, _ in blocks])] = np.arange(len(texts))
        return stacked[inverse]

    return encode


def _load(row: str, batch_size: int, workdir: Path):
    """``encode(texts, kind) -> csr`` for a row; raises when the row cannot run here."""
    import scipy.sparse as sp
    import torch

    if row.startswith("sentence-transformers"):
        from sentence_transformers import SparseEncoder

        backend = {"fp32": "torch", "onnx": "onnx", "openvino": "openvino"}[row.split()[-1]]
        st = SparseEncoder(_model(), device="cpu", backend=backend, local_files_only=True)

        def encode(texts, kind="document"):
            st.max_seq_length = 256 if kind == "document" else 64
            fn = st.encode_document if kind == "document" else st.encode_query
            dense = fn(texts, batch_size=batch_size, convert_to_tensor=True)
            return sp.csr_matrix(dense.to_dense().float().numpy())

        return encode
    if row in ("spladeray fp32", "spladeray auto"):
        enc = _encoder(row.split()[-1].replace("fp32", "float32"), batch_size)
        return enc.encode_csr
    if row == "spladeray bf16 + backbone":
        from spladeray.model import precision

        enc = _encoder("bfloat16", batch_size)
        both = precision.Plan(torch.bfloat16, torch.bfloat16)
        enc.precision_plan = lambda: both  # the candidate: backbone under autocast as well
        return enc.encode_csr
    if row == "spladeray int8 dynamic":
        enc = _encoder("float32", batch_size)
        enc.mlm = torch.ao.quantization.quantize_dynamic(
            enc.mlm, {torch.nn.Linear}, dtype=torch.qint8
        )
        from spladeray.model.heads import split_mlm

        enc._parts = split_mlm(enc.mlm)
        return enc.encode_csr
    enc = _encoder("float32", batch_size)
    from spladeray.model.onnx_export import export_onnx, onnx_session, run_onnx

    path = workdir / "splade-tiny.onnx"
    if not path.exists():
        export_onnx(enc, path)
    if row == "spladeray onnxruntime fp32":
        session = onnx_session(path, threads=torch.get_num_threads())
        return _graph_encoder(enc, lambda ids, mask: run_onnx(session, ids, mask))
    if row == "spladeray openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU")

        def run(ids, mask):
            return compiled({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]

        return _graph_encoder(enc, run)
    raise ValueError(f"unknown row {row!r}")


def _peak_memory_worker(row: str, n: int, batch_size: int, workdir: str) -> None:
    """Encode ``n`` documents in a fresh process and print its peak RSS in MB."""
    encode = _load(row, batch_size, Path(workdir))
    encode(_texts(n))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peak(row: str, batch_size: int, workdir: Path, docs: int) -> float | None:
    cmd = [sys.executable, __file__, "--memory-worker", row, "--batch-size", str(batch_size)]
    cmd += ["--memory-docs", str(docs)]
    cmd += ["--workdir", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--rows", choices=["all", "main"], default="all")
    parser.add_argument("--memory-docs", type=int, default=200, help="docs per peak-RSS worker")
    parser.add_argument("--memory-worker")
    parser.add_argument("--workdir")
    parser.add_argument("--export-worker", metavar="DIR")
    args = parser.parse_args()
    if args.export_worker:
        from spladeray.model.onnx_export import export_onnx

        export_onnx(
            _encoder("float32", args.batch_size), Path(args.export_worker) / "splade-tiny.onnx"
        )
        return
    if args.memory_worker:
        _peak_memory_worker(args.memory_worker, args.memory_docs, args.batch_size, args.workdir)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    wanted = MAIN_ROWS + (CANDIDATES if args.rows == "all" else [])
    # Peak memory first, while this process is still small: Linux carries a parent's peak RSS
    # over fork + exec into the child's ru_maxrss, so measuring later would report ours. The
    # ONNX graph is exported in a child too, for the same reason.
    if any("onnxruntime" in r or "spladeray openvino" in r for r in wanted):
        subprocess.run([sys.executable, __file__, "--export-worker", str(workdir)], check=True)
    peak = {row: _peak(row, args.batch_size, workdir, args.memory_docs) for row in wanted}

    import numpy as np
    import scipy.sparse as sp

    from spladeray.eval.precision import beir_slice, ndcg_at_10

    # Load every row; one that cannot run here (a missing optional package, no offline
    # export) is reported with its reason instead of a number.
    rows, skipped = {}, {}
    for row in wanted:
        try:
            rows[row] = _load(row, args.batch_size, workdir)
            rows[row](["warm-up text"] * 4)
        except Exception as exc:  # noqa: BLE001 -- the reason is the result for this row
            skipped[row] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    dids, texts, qids, queries, qrels = beir_slice(_scifact(), "dev", args.docs)
    seconds = dict.fromkeys(rows, 0.0)
    outputs: dict[str, list] = {r: [] for r in rows}
    chunk = -(-len(texts) // args.rounds)
    for r, lo in enumerate(range(0, len(texts), chunk)):
        order = list(rows) if r % 2 == 0 else list(rows)[::-1]
        for row in order:
            start = time.perf_counter()
            outputs[row].append(rows[row](texts[lo : lo + chunk], "document"))
            seconds[row] += time.perf_counter() - start
    docs = {r: sp.vstack(outputs[r], format="csr") for r in rows}
    ndcg = {r: ndcg_at_10(rows[r](queries, "query"), docs[r], qids, dids, qrels) for r in rows}
    ref = docs["spladeray fp32"].toarray()
    diff = {r: float(np.abs(docs[r].toarray() - ref).max()) for r in rows}
    rate = {r: len(texts) / seconds[r] for r in rows}
    base = rate["sentence-transformers fp32"]

    from spladeray.model.precision import plan

    enc_auto = _encoder("auto", args.batch_size)
    chosen = plan("auto", enc_auto.device).name
    print(
        f"documents: {len(texts)} (SciFact), max length 256, batch size {args.batch_size}, "
        f"splade-tiny, CPU, {os.cpu_count()} cores; 'auto' resolved to {chosen}; nDCG@10 on "
        f"{len(qids)} dev queries over these documents"
    )
    head = f"{'':30}{'docs/s':>8}{'x ST':>7}{'peak RSS MB':>13}{'max|diff|':>11}{'nDCG@10':>9}{'delta':>9}"
    print(head)
    for r in rows:
        mem = f"{peak[r]:13.0f}" if peak[r] is not None else f"{'–':>13}"
        print(
            f"{r:30}{rate[r]:8.1f}{rate[r] / base:7.2f}{mem}{diff[r]:11.2e}"
            f"{ndcg[r]:9.4f}{ndcg[r] - ndcg['spladeray fp32']:+9.4f}"
        )
    for r, why in skipped.items():
        print(f"{r:30} not run: {why}")
    ours = "spladeray auto"
    result = {
        "name": "encode",
        "metric": "docs/s",
        "baseline": round(base, 2),
        "candidate": round(rate[ours], 2),
        "ratio": round(rate[ours] / base, 3),
        "baseline_name": "sentence-transformers SparseEncoder.encode_document (fp32)",
        "candidate_name": f"SpladeEncoder.encode_documents (dtype auto = {chosen})",
        "max_abs_diff": diff[ours],
        "ndcg_delta": round(ndcg[ours] - ndcg["spladeray fp32"], 5),
        "peak_rss_mb": {"baseline": peak["sentence-transformers fp32"], "candidate": peak[ours]},
        "rows": {
            r: {
                "docs_per_s": round(rate[r], 2),
                "ratio": round(rate[r] / base, 3),
                "peak_rss_mb": peak[r],
                "max_abs_diff": diff[r],
                "ndcg@10": round(ndcg[r], 5),
            }
            for r in rows
        },
        "not_run": skipped,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
