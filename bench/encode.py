"""Documents/s of ``SpladeEncoder.encode_documents`` vs sentence-transformers' ``SparseEncoder``.

Same model (splade-tiny), same 1,000 SciFact documents, same max length 256, same batch size,
each side in its own fresh subprocess (so peak RSS is its own), in the same run. Prints the
speed ratio, the max abs difference of the vectors and both peak memories, then a final
``RESULT {json}`` line for bench/run_all.py.

    python bench/encode.py [--docs 1000] [--batch-size 32]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _texts(n: int) -> list[str]:
    from spladeray.data.beir import doc_text, iter_corpus
    from spladeray.paths import asset

    return [doc_text(d) for d in iter_corpus(asset("beir", "scifact"), limit=n)]


def _worker(side: str, n: int, batch_size: int, out: str) -> None:
    import numpy as np
    import scipy.sparse as sp

    from spladeray.paths import asset

    model = str(asset("models", "splade-tiny"))
    texts = _texts(n)
    if side == "spladeray":
        from spladeray.model import SpladeEncoder

        enc = SpladeEncoder.from_pretrained(model, max_document_length=256, batch_size=batch_size)
        enc.encode_documents(texts[:16])  # warm-up
        start = time.perf_counter()
        vectors = enc.encode_documents(texts)
        seconds = time.perf_counter() - start
        matrix = enc.encode_documents_csr(texts[:200])
    else:
        from sentence_transformers import SparseEncoder

        st = SparseEncoder(model, device="cpu")
        st.max_seq_length = 256
        st.encode_document(texts[:16], batch_size=batch_size)
        start = time.perf_counter()
        st.encode_document(texts, batch_size=batch_size)
        seconds = time.perf_counter() - start
        dense = st.encode_document(texts[:200], batch_size=batch_size, convert_to_tensor=True)
        matrix = sp.csr_matrix(dense.to_dense().numpy())
        vectors = None
    sp.save_npz(out + ".npz", matrix)
    stats = {
        "docs_per_s": n / seconds,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "avg_active_dims": None if vectors is None else float(np.mean([len(v) for v in vectors])),
    }
    Path(out + ".json").write_text(json.dumps(stats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--worker", choices=["spladeray", "sentence-transformers"])
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.docs, args.batch_size, args.out)
        return

    import numpy as np
    import scipy.sparse as sp

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("sentence-transformers", "spladeray"):
            out = str(Path(tmp) / side)
            cmd = [sys.executable, __file__, "--worker", side, "--out", out]
            cmd += ["--docs", str(args.docs), "--batch-size", str(args.batch_size)]
            subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
            results[side] = json.loads(Path(out + ".json").read_text())
            results[side]["matrix"] = sp.load_npz(out + ".npz")
        diff = np.abs(
            results["spladeray"]["matrix"].toarray()
            - results["sentence-transformers"]["matrix"].toarray()
        ).max()
    ours, theirs = results["spladeray"], results["sentence-transformers"]
    ratio = ours["docs_per_s"] / theirs["docs_per_s"]
    print(f"documents: {args.docs}, max length 256, batch size {args.batch_size}, splade-tiny, CPU")
    print(f"{'':24}{'docs/s':>10}{'seconds':>10}{'peak RSS MB':>14}")
    for name, r in (("sentence-transformers", theirs), ("spladeray", ours)):
        print(f"{name:24}{r['docs_per_s']:10.1f}{r['seconds']:10.1f}{r['peak_rss_mb']:14.0f}")
    print(f"speed ratio spladeray / sentence-transformers: {ratio:.2f}x")
    print(f"peak memory ratio: {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x")
    print(f"max abs difference of vectors (first 200 docs): {diff:.2e}")
    print(f"average active dims per document: {ours['avg_active_dims']:.0f}")
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "encode",
                "metric": "docs/s",
                "baseline": round(theirs["docs_per_s"], 2),
                "candidate": round(ours["docs_per_s"], 2),
                "ratio": round(ratio, 3),
                "baseline_name": "sentence-transformers SparseEncoder.encode_document",
                "candidate_name": "SpladeEncoder.encode_documents",
                "max_abs_diff": float(diff),
                "peak_rss_mb": {
                    "baseline": theirs["peak_rss_mb"],
                    "candidate": ours["peak_rss_mb"],
                },
            }
        )
    )


if __name__ == "__main__":
    main()
